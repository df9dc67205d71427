"""dagster-platform: an ontology-centred AI platform built as a Dagster project."""

from dagster_platform.lib.offline import stay_offline

__version__ = "0.1.0"

stay_offline()
