"""Every path and endpoint the platform uses, read from the environment in one place.

Nothing here runs at import time: call :func:`get_settings` when a value is needed, so that
tests and Dagster runs see the environment they were started with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

DEFAULT_BROKER_PORT = 19092

Profile = Literal["local", "docker", "k8s"]

# Where each deployment finds its services when nothing else is said: the service names of
# docker/compose.yaml and docker/k8s/values.yaml. Any environment variable still wins, so a
# profile is a starting point, never a fork of the code.
_SERVICES = {
    "state_dir": "/var/lib/dagster-platform",
    "kafka_bootstrap_servers": "kafka:9092",
    "chroma_host": "chroma:8000",
    "mlflow_tracking_uri": "http://mlflow:5000",
}
PROFILES: dict[str, dict[str, Any]] = {
    "local": {},
    "docker": {**_SERVICES, "llm_backend": "transformers"},
    "k8s": {**_SERVICES, "llm_backend": "vllm-server", "vllm_base_url": "http://vllm:8000/v1"},
}


def _default_state_dir() -> Path:
    """A git-ignored `.state` folder in the checkout, or one in the home folder when installed."""
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / ".state"
    return Path.home() / ".dagster-platform"


def _default_data_dir() -> Path:
    return REPO_ROOT / "data" / "sample"


def _default_ontology_dir() -> Path:
    return REPO_ROOT / "data" / "ontology"


def _default_roles_file() -> Path:
    return REPO_ROOT / "data" / "roles.yaml"


class Settings(BaseSettings):
    """Configuration of one platform deployment; each field names its environment variable."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    profile: Profile = Field(
        default="local",
        validation_alias=AliasChoices("DAGSTER_PLATFORM_PROFILE", "profile"),
        description="Deployment profile whose defaults fill every setting not given: `local` "
        "(embedded services in the state folder), `docker` (docker/compose.yaml) or `k8s` "
        "(docker/k8s/values.yaml).",
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        validation_alias=AliasChoices("DAGSTER_PLATFORM_STATE", "state_dir"),
        description="Runtime state: warehouse, models, Dagster home, broker pid and logs.",
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        validation_alias=AliasChoices("DAGSTER_PLATFORM_DATA", "data_dir"),
        description="Input data folder read by the file ingestion assets.",
    )
    ontology_dir: Path = Field(
        default_factory=_default_ontology_dir,
        validation_alias=AliasChoices("DAGSTER_PLATFORM_ONTOLOGY", "ontology_dir"),
        description="Folder of the ontology YAML (object, link and action types, functions).",
    )
    roles_file: Path = Field(
        default_factory=_default_roles_file,
        validation_alias=AliasChoices("DAGSTER_PLATFORM_ROLES", "roles_file"),
        description="Users and their roles, for approving ontology actions.",
    )
    ontology_refresh_cron: str = Field(
        default="*/5 * * * *",
        validation_alias=AliasChoices("DAGSTER_PLATFORM_ONTOLOGY_REFRESH", "ontology_refresh_cron"),
        description="When the ontology picks up changes of tables fed by Kafka (file tables "
        "and schema changes are followed at once).",
    )
    yarn_resource_manager_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("YARN_RESOURCE_MANAGER_URL", "yarn_resource_manager_url"),
        description="When set, an approved kill also calls the YARN ResourceManager REST API.",
    )
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
        description="External Kafka cluster; unset means the embedded Tansu broker.",
    )
    broker_port: int = Field(
        default=DEFAULT_BROKER_PORT,
        validation_alias=AliasChoices("DAGSTER_PLATFORM_BROKER_PORT", "broker_port"),
        description="Port of the embedded broker on 127.0.0.1.",
    )
    stream_sensor_interval: float = Field(
        default=5.0,
        ge=1.0,
        validation_alias=AliasChoices(
            "DAGSTER_PLATFORM_STREAM_SENSOR_INTERVAL", "stream_sensor_interval"
        ),
        description="Seconds between backlog checks of the stream sensors.",
    )
    stream_landing: Literal["sensor", "run"] = Field(
        default="sensor",
        validation_alias=AliasChoices("DAGSTER_PLATFORM_STREAM_LANDING", "stream_landing"),
        description="`sensor`: a stream sensor lands each batch itself and reports the "
        "materializations, no run at all (`bench streaming` compares the two); `run`: it "
        "requests a landing run per backlog, each with its own logs and process.",
    )
    stream_warehouse_wait: float = Field(
        default=20.0,
        gt=0,
        validation_alias=AliasChoices(
            "DAGSTER_PLATFORM_STREAM_WAREHOUSE_WAIT", "stream_warehouse_wait"
        ),
        description="Seconds a stream sensor waits for a warehouse another writer holds "
        "before leaving the batch to its next tick.",
    )
    llm_backend: Literal["auto", "transformers", "vllm-server", "vllm-engine"] = Field(
        default="auto",
        validation_alias=AliasChoices("LLM_BACKEND", "llm_backend"),
        description="`auto`: the vLLM server at VLLM_BASE_URL when set, else the local one "
        "while it runs (`dagster-platform vllm start`, which `make run` does), else "
        "transformers in process — the light choice and the fallback.",
    )
    vllm_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("VLLM_BASE_URL", "vllm_base_url"),
        description="An external vLLM server (production: the official image on a GPU); set, "
        "nothing is started locally.",
    )
    vllm_port: int = Field(
        default=18000,
        validation_alias=AliasChoices("DAGSTER_PLATFORM_VLLM_PORT", "vllm_port"),
        description="Port of the local vLLM server on 127.0.0.1.",
    )
    vllm_max_lora_rank: int = Field(
        default=16,
        validation_alias=AliasChoices("VLLM_MAX_LORA_RANK", "vllm_max_lora_rank"),
        description="The server's --max-lora-rank: the local server starts with it, and an "
        "adapter of a higher rank is refused before it is sent to any server.",
    )
    vllm_environment: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("DAGSTER_PLATFORM_VLLM_ENV", "vllm_environment"),
        description="Virtual environment of the local vLLM server (default: vllm/venv in the "
        "state folder), created on first use.",
    )
    vllm_api_key: str | None = Field(
        default=None,
        repr=False,
        validation_alias=AliasChoices("VLLM_API_KEY", "vllm_api_key"),
        description="Bearer token of the vLLM server, when it was started with --api-key.",
    )
    registered_model: str = Field(
        default="ops-assistant",
        validation_alias=AliasChoices("REGISTERED_MODEL", "registered_model"),
        description="MLflow registered model whose @champion adapter the LLM serves.",
    )
    llm_timeout_s: float = Field(
        default=120.0,
        gt=0,
        validation_alias=AliasChoices("LLM_TIMEOUT_S", "llm_timeout_s"),
        description="Longest one LLM call may take (HTTP timeout; generation time in process).",
    )
    llm_retries: int = Field(
        default=2,
        ge=0,
        validation_alias=AliasChoices("LLM_RETRIES", "llm_retries"),
        description="Retries of a failed LLM call, with exponential backoff.",
    )
    llm_breaker_fail_max: int = Field(
        default=5,
        ge=1,
        validation_alias=AliasChoices("LLM_BREAKER_FAIL_MAX", "llm_breaker_fail_max"),
        description="Consecutive failures that open the LLM circuit breaker.",
    )
    llm_breaker_reset_s: float = Field(
        default=60.0,
        gt=0,
        validation_alias=AliasChoices("LLM_BREAKER_RESET_S", "llm_breaker_reset_s"),
        description="Seconds an open breaker waits before letting a trial call through.",
    )
    llm_breaker_success_threshold: int = Field(
        default=3,
        ge=1,
        validation_alias=AliasChoices(
            "LLM_BREAKER_SUCCESS_THRESHOLD", "llm_breaker_success_threshold"
        ),
        description="Successful trial calls that close a half-open breaker.",
    )
    base_model: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BASE_MODEL", "base_model"),
        description="Base LLM; unset means the packaged SmolLM2-135M-Instruct.",
    )
    embedding_model: str | None = Field(
        default=None,
        validation_alias=AliasChoices("EMBEDDING_MODEL", "embedding_model"),
        description="Sentence-transformers model; unset means the packaged all-MiniLM-L6-v2.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "mlflow_tracking_uri")
    )
    chroma_host: str | None = Field(
        default=None, validation_alias=AliasChoices("CHROMA_HOST", "chroma_host")
    )
    api_keys: str | None = Field(
        default=None,
        repr=False,
        validation_alias=AliasChoices("DAGSTER_PLATFORM_API_KEYS", "api_keys"),
        description="Keys of the HTTP API as comma-separated `name:key` pairs; the name is "
        "recorded as the user. Unset means the key `dagster-platform serve` keeps in "
        "<state>/api_key.",
    )
    api_rate_limit: str = Field(
        default="30/minute",
        validation_alias=AliasChoices("DAGSTER_PLATFORM_API_RATE_LIMIT", "api_rate_limit"),
        description="Requests one API key may make, in the `limits` notation (e.g. 30/minute).",
    )
    webhook_url: str | None = Field(
        default=None,
        repr=False,
        pattern=r"^https?://\S+$",
        validation_alias=AliasChoices("DAGSTER_PLATFORM_WEBHOOK_URL", "webhook_url"),
        description="A Slack-compatible incoming webhook (http or https URL) that new action "
        "proposals and their outcomes are posted to; unset posts nothing. Kept out of logs: "
        "such a URL is a credential.",
    )
    finetune_feedback_threshold: int = Field(
        default=20,
        ge=1,
        validation_alias=AliasChoices(
            "DAGSTER_PLATFORM_FINETUNE_THRESHOLD", "finetune_feedback_threshold"
        ),
        description="New positive ratings or corrections since the last dataset that start "
        "the fine-tune loop.",
    )
    finetune_cron: str = Field(
        default="0 3 * * *",
        validation_alias=AliasChoices("DAGSTER_PLATFORM_FINETUNE_CRON", "finetune_cron"),
        description="When the nightly fine-tune loop runs (03:00, the seed's time).",
    )
    finetune_timezone: str = Field(
        default="UTC",
        validation_alias=AliasChoices("DAGSTER_PLATFORM_FINETUNE_TIMEZONE", "finetune_timezone"),
        description="Time zone of the nightly schedule (e.g. Asia/Seoul).",
    )

    k8s_gpu_node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        validation_alias=AliasChoices(
            "DAGSTER_PLATFORM_K8S_GPU_NODE_SELECTOR", "k8s_gpu_node_selector"
        ),
        description="Node labels (JSON) of the GPU nodes that training and serving steps run "
        "on in Kubernetes; the default is the label NVIDIA's GPU feature discovery sets.",
    )
    k8s_gpu_count: int = Field(
        default=1,
        ge=1,
        validation_alias=AliasChoices("DAGSTER_PLATFORM_K8S_GPU_COUNT", "k8s_gpu_count"),
        description="GPUs a training or serving step requests.",
    )
    k8s_gpu_step_cpu: str = Field(
        default="4",
        validation_alias=AliasChoices("DAGSTER_PLATFORM_K8S_GPU_STEP_CPU", "k8s_gpu_step_cpu"),
        description="CPU request of a GPU step (Kubernetes quantity).",
    )
    k8s_gpu_step_memory: str = Field(
        default="32Gi",
        validation_alias=AliasChoices(
            "DAGSTER_PLATFORM_K8S_GPU_STEP_MEMORY", "k8s_gpu_step_memory"
        ),
        description="Memory request and limit of a GPU step (Kubernetes quantity).",
    )

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        """Fill what the environment and the caller left out from the chosen profile."""
        if not isinstance(data, dict):
            return data
        given = {str(key).lower() for key in data}
        names = field_names("profile")
        profile = next((v for k, v in data.items() if str(k).lower() in names), "local")
        for name, value in PROFILES.get(str(profile), {}).items():
            if not given & field_names(name):
                data[name] = value
        return data

    @property
    def metrics_dir(self) -> Path:
        """Where each process writes its Prometheus samples for one exporter to add up."""
        return self.state_dir / "metrics"

    @property
    def embedded_broker(self) -> bool:
        return not self.kafka_bootstrap_servers

    @property
    def bootstrap_servers(self) -> str:
        """Where Kafka clients connect: the external cluster, else the embedded broker."""
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.broker_port}"

    @property
    def warehouse_path(self) -> Path:
        return self.state_dir / "warehouse.duckdb"

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster_home"

    @property
    def broker_dir(self) -> Path:
        return self.state_dir / "broker"

    @property
    def vllm_dir(self) -> Path:
        return self.state_dir / "vllm"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def resolved_mlflow_tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.state_dir / 'mlflow.db'}"


def field_names(name: str) -> set[str]:
    """A setting's field name and environment variables, lower-cased."""
    alias = Settings.model_fields[name].validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else []
    return {name, *(str(choice).lower() for choice in choices)}


def get_settings() -> Settings:
    """Read the settings from the current environment (cheap; call it where needed)."""
    return Settings()
