"""Evaluation: metrics, reports and example overlays for a model of any family."""
