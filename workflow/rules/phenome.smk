# ICD-to-phecode mapping and time-to-event construction (issue: phenome stage).
PHENOME_TARGETS = []
