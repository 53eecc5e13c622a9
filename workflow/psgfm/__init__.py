"""psgfm: polysomnography foundation-model workflow (harmonisation, export, phenome)."""

__version__ = "0.1.0"

MODALITIES = ("BAS", "RESP", "EKG", "EMG")
"""Modality groups of SleepFM-Clinical: BAS = brain (EEG + EOG), RESP, EKG (cardiac), EMG."""
