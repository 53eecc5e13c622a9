"""Stage `phenome` (rule file ``workflow/rules/phenome.smk``): phecode maps, ICD -> phecode
mapping and per-phecode case/control status with time to event (Polars, streaming)."""
