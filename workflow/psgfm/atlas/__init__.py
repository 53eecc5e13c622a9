"""Survival atlas: per-phecode Cox models on night embeddings, held-out metrics, plots."""
