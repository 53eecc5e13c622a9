"""Experiment harnesses: code that only the experiments wing (experiments/) runs.

Nothing in the pipeline (the stage subpackages, the CLI, the rule scripts) imports this
subpackage; tests/test_layering.py enforces that.

- :mod:`psgfm.validation.atlas`: the atlas against the demo EHR's planted truth (statistics
  alone, the stand-in and oracle runs, pooled cohorts, re-runs of a finished atlas);
- :mod:`psgfm.validation.probe`: the night-pooling comparison of a finished validation run;
- :mod:`psgfm.validation.calibrate_demo`: the demo cohort's calibration against real PSG.
"""
