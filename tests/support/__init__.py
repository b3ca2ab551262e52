"""Shared test helpers: planted inputs, tiny labelers, datasets built by hand."""
