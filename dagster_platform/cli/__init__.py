"""`dagster-platform`, the console command: one module per command group."""

from dagster_platform.cli.main import app

__all__ = ["app"]
