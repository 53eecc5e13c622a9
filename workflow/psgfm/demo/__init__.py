"""Stage `demo` (rule file ``workflow/rules/demo.smk``): the seeded, generated demo cohort
(EDF/EDF+ recordings of several "sites", hypnograms, respiratory events, synthetic EHR)."""
