"""The HTTP API served by `dagster-platform serve`."""

from dagster_platform.api.app import create_app

__all__ = ["create_app"]
