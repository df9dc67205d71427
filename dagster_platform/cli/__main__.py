"""`python -m dagster_platform.cli`: the console command without its script."""

from dagster_platform.cli.main import app

app()
