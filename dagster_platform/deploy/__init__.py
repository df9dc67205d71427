"""Where the platform runs: the Dagster instance, Kubernetes step tags and the status report."""
