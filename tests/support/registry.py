"""Adapter runs and registered versions in a real MLflow store, as the finetune assets
leave them."""

from __future__ import annotations

from pathlib import Path

NAME = "ops-assistant"  # the registered model the tests' LLM services serve


def log_adapter_run(
    tracking_uri: str, root: Path, folder: Path | None, status: str = "FINISHED"
) -> str:
    """A training run ended with `status` whose `adapter` artifact is `folder` (None: no
    artifact, as an interrupted training leaves it)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name("finetune")
    experiment = (
        found.experiment_id
        if found
        else client.create_experiment("finetune", artifact_location=(root / "art").as_uri())
    )
    run = client.create_run(experiment)
    if folder is not None:
        client.log_artifacts(run.info.run_id, str(folder), "adapter")
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


class Registry:
    """Registers adapter folders as versions of the model, as the finetune assets do."""

    def __init__(self, root: Path):
        import mlflow

        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = mlflow.MlflowClient(self.uri, self.uri)
        self.experiment = self.client.create_experiment(
            "adapters", artifact_location=(root / "artifacts").as_uri()
        )
        self.client.create_registered_model(NAME)

    def register(self, folder: Path, champion: bool = True) -> str:
        run = self.client.create_run(self.experiment)
        self.client.log_artifacts(run.info.run_id, str(folder), "adapter")
        self.client.set_terminated(run.info.run_id)
        version = self.client.create_model_version(
            NAME, f"{run.info.artifact_uri}/adapter", run.info.run_id
        ).version
        if champion:
            self.client.set_registered_model_alias(NAME, "champion", version)
        return str(version)
