"""Evaluation engine: per-case metrics, clinical measures, collection across ranks, reports."""
