"""What Kubernetes gives the steps that train and serve adapters.

dagster-k8s reads the `dagster-k8s/config` tag of an op into the pod spec of the step's job
(`k8s_job_executor`) or the run's job (`K8sRunLauncher`): the GPU request, the node selector
that keeps the pod on GPU nodes, and the toleration of the taint GPU node pools carry. Every
other step stays on the CPU nodes and their defaults in docker/k8s/values.yaml.
"""

from __future__ import annotations

from typing import Any

from dagster_platform.settings import Settings

K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RESOURCE = "nvidia.com/gpu"


def gpu_step_tags(settings: Settings) -> dict[str, Any]:
    """Op tags that put a step on a GPU node with the configured GPUs, CPU and memory."""
    requests: dict[str, str] = {
        "cpu": settings.k8s_gpu_step_cpu,
        "memory": settings.k8s_gpu_step_memory,
        GPU_RESOURCE: str(settings.k8s_gpu_count),
    }
    limits = {"memory": settings.k8s_gpu_step_memory, GPU_RESOURCE: str(settings.k8s_gpu_count)}
    return {
        K8S_CONFIG_TAG: {
            "container_config": {"resources": {"requests": requests, "limits": limits}},
            "pod_spec_config": {
                "node_selector": dict(settings.k8s_gpu_node_selector),
                "tolerations": [
                    {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
        }
    }
