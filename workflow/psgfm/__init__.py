"""psgfm: polysomnography foundation-model workflow.

One subpackage per stage, each matching its rule file in ``workflow/rules/``: ``signals``
(montage harmonisation and windowed tensor export), ``model`` (contrastive pretraining and
embedding extraction), ``phenome`` (ICD-to-phecode mapping and time-to-event labels),
``atlas`` (per-phecode Cox models, held-out metrics, tables and plots) and ``demo`` (the
generated demo cohort); shared helpers (``io``, ``config``, ``logutil``, ``launch``,
``audit``) below them and the command line (``cli``) above. ``validation`` holds the
experiments' harnesses, which no pipeline module imports (tests/test_layering.py).
"""

__version__ = "0.1.0"

MODALITIES = ("BAS", "RESP", "EKG", "EMG")
"""Modality groups of SleepFM-Clinical: BAS = brain (EEG + EOG), RESP, EKG (cardiac), EMG."""
