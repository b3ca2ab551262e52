"""Scoring labels: confusion-matrix metrics and the ground truth they are scored against."""
