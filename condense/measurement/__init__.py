"""Measurement: every number condense reports is measured here, the same way for every model and step."""
