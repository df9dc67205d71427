"""dagster-platform: an ontology-centred AI platform built as a Dagster project."""

__version__ = "0.1.0"
