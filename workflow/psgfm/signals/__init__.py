"""Stage `signals` (rule file ``workflow/rules/signals.smk``): EDF/BDF reading, montage
harmonisation, hypnograms, and the windowed Arrow tensor export."""
