"""External validation of the published SleepFM-Clinical disease model (rules of
workflow/rules/release.smk): the release's disease head run on every night's token
embeddings of the release encoder (``head``), 1,065 log-hazards per night."""
