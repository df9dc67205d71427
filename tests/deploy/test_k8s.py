"""The Kubernetes deployment without a cluster: the run launcher the Helm chart renders from
docker/k8s/values.yaml loads, the k8s profile runs steps with `k8s_job_executor`, and the Job
that dagster-k8s builds for the training step asks for a GPU node."""

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config
from kubernetes.client import ApiClient

from dagster_platform.deploy.k8s import GPU_RESOURCE, K8S_CONFIG_TAG, gpu_step_tags
from dagster_platform.settings import REPO_ROOT, get_settings

VALUES = REPO_ROOT / "docker" / "k8s" / "values.yaml"
GPU_STEPS = ("lora_adapter", "adapter_evaluation", "promoted_adapter")

# how the chart's _run-launcher.tpl renders runLauncher.config.k8sRunLauncher into dagster.yaml
_RENDERED = {
    "loadInclusterConfig": "load_incluster_config",
    "jobNamespace": "job_namespace",
    "imagePullPolicy": "image_pull_policy",
    "envVars": "env_vars",
    "volumeMounts": "volume_mounts",
    "volumes": "volumes",
    "labels": "labels",
    "resources": "resources",
    "runK8sConfig": "run_k8s_config",
    "schedulerName": "scheduler_name",
    "securityContext": "security_context",
    "failPodOnRunFailure": "fail_pod_on_run_failure",
}


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text(encoding="utf-8"))


def rendered_launcher_config(values: dict[str, Any]) -> dict[str, Any]:
    """The K8sRunLauncher config of the instance the chart writes, with what the chart takes
    from its own objects (namespace, service account, config maps) filled in."""
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    given = values["runLauncher"]["config"]["k8sRunLauncher"]
    unknown = set(given) - set(_RENDERED) - {"envConfigMaps", "envSecrets", "image"}
    assert not unknown, f"keys the chart does not render into the launcher: {unknown}"
    config = {_RENDERED[k]: v for k, v in given.items() if k in _RENDERED}
    config.setdefault("job_namespace", "dagster")
    config["service_account_name"] = "dagster"
    config["dagster_home"] = "/opt/dagster/dagster_home"
    config["instance_config_map"] = "dagster-instance"
    config["postgres_password_secret"] = "dagster-postgresql-secret"
    config["env_config_maps"] = ["dagster-pipeline-env"] + [
        c["name"] for c in given.get("envConfigMaps", [])
    ]
    if given.get("envSecrets"):
        config["env_secrets"] = [s["name"] for s in given["envSecrets"]]
    return config


@pytest.fixture
def launcher(values: dict[str, Any], tmp_path: Path) -> K8sRunLauncher:
    """The run launcher, configured as the chart configures it; a kubeconfig that names an
    unreachable API server stands in for the cluster (nothing here calls it)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "none", "user": {"token": "unused"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
                "current-context": "none",
            }
        )
    )
    config = rendered_launcher_config(values)
    checked = process_config(K8sRunLauncher.config_type(), config)
    assert checked.success, checked.errors
    return K8sRunLauncher(
        **{**checked.value, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    )


def step_job(launcher: K8sRunLauncher, image: str, step: str, tags: dict[str, Any]) -> dict:
    """The Job spec `k8s_job_executor` creates for one step, built the way its step handler
    builds it: the launcher's context, then the step's `dagster-k8s/config` tag."""
    run = dg.DagsterRun(job_name="finetune_job", run_id="0f8b7c4e-aaaa-bbbb-cccc-1234567890ab")
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False).merge(
        K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags))
    )
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(image, launcher),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{step.replace('_', '-')}",
        pod_name=f"dagster-step-{step.replace('_', '-')}",
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/op": step},
    )
    return ApiClient().sanitize_for_serialization(job)


def user_deployment(values: dict[str, Any]) -> dict[str, Any]:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def test_the_chart_runs_our_code_with_the_k8s_profile(values: dict[str, Any]) -> None:
    deployment = user_deployment(values)
    env = {e["name"]: e.get("value") for e in deployment.get("env", [])}
    assert env.get("DAGSTER_PLATFORM_PROFILE") == "k8s"
    assert "dagster_platform.definitions" in " ".join(deployment["dagsterApiGrpcArgs"])
    launcher_env = values["runLauncher"]["config"]["k8sRunLauncher"].get("envVars", [])
    assert "DAGSTER_PLATFORM_PROFILE=k8s" in launcher_env


def test_the_run_launcher_of_the_values_loads(launcher: K8sRunLauncher) -> None:
    assert launcher.job_namespace
    mounts = {m["mountPath"] for m in launcher.volume_mounts}
    assert "/var/lib/dagster-platform" in mounts, "step pods must share the state volume"


def test_the_k8s_profile_runs_each_step_in_its_own_pod() -> None:
    from dagster_platform.definitions import executor_for

    assert executor_for("k8s") is k8s_job_executor
    assert executor_for("local") is dg.in_process_executor
    checked = process_config(
        k8s_job_executor.config_schema.config_type,
        {"max_concurrent": 4, "retries": {"enabled": {}}},
    )
    assert checked.success, checked.errors


@pytest.mark.parametrize("step", GPU_STEPS)
def test_training_and_serving_steps_ask_for_a_gpu_node(
    step: str, launcher: K8sRunLauncher, values: dict[str, Any], state_dir: Path
) -> None:
    from dagster_platform.definitions import defs

    tags = dict(defs().resolve_assets_def(step).op.tags)
    image = user_deployment(values)["image"]
    spec = step_job(launcher, f"{image['repository']}:{image['tag']}", step, tags)
    pod = spec["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"][GPU_RESOURCE] == "1"
    assert container["resources"]["requests"][GPU_RESOURCE] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # the launcher's volumes and environment still reach the GPU pod
    assert "/var/lib/dagster-platform" in {m["mountPath"] for m in container["volumeMounts"]}
    assert container["image"] == f"{image['repository']}:{image['tag']}"


def test_other_steps_stay_on_cpu_nodes(
    launcher: K8sRunLauncher, values: dict[str, Any], state_dir: Path
) -> None:
    from dagster_platform.definitions import defs

    tags = dict(defs().resolve_assets_def("sft_dataset").op.tags)
    assert K8S_CONFIG_TAG not in tags
    spec = step_job(launcher, "dagster-platform:test", "sft_dataset", tags)
    pod = spec["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod or not pod["nodeSelector"]
    assert GPU_RESOURCE not in json.dumps(pod)


def test_gpu_nodes_and_sizes_are_settings(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_PLATFORM_K8S_GPU_NODE_SELECTOR", '{"pool": "a100"}')
    monkeypatch.setenv("DAGSTER_PLATFORM_K8S_GPU_COUNT", "2")
    config = gpu_step_tags(get_settings())[K8S_CONFIG_TAG]
    assert config["pod_spec_config"]["node_selector"] == {"pool": "a100"}
    assert config["container_config"]["resources"]["limits"][GPU_RESOURCE] == "2"
    monkeypatch.setenv("DAGSTER_PLATFORM_K8S_GPU_COUNT", "0")
    with pytest.raises(ValueError, match="DAGSTER_PLATFORM_K8S_GPU_COUNT"):
        get_settings()


def test_the_chart_and_the_stack_use_the_installed_postgres_driver(
    values: dict[str, Any],
) -> None:
    import importlib.util

    stack = yaml.safe_load((REPO_ROOT / "docker" / "dagster.yaml").read_text(encoding="utf-8"))
    scheme = stack["storage"]["postgres"]["postgres_db"]["scheme"]
    assert values["postgresql"]["postgresqlScheme"] == scheme == "postgresql+psycopg2"
    assert importlib.util.find_spec("psycopg2") is not None
