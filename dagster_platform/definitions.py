"""The code location: merges what `assets`, `resources` and `sensors` export.

Built when Dagster loads the code location, not when this module is imported: the settings
are read then, and so is the ontology YAML the lineage is drawn from (a broken one fails the
load with its problems).

Locally runs execute in process: every warehouse writer shares one pool slot anyway, and a run
that does not start a process per step starts landing seconds sooner. In the `k8s` profile each
step is a pod of its own (dagster-k8s `k8s_job_executor`), so the training and serving steps
can ask for a GPU node through their `dagster-k8s/config` tags.
"""

import dagster as dg

import assets
import resources
import sensors
from dagster_platform.console import notify
from dagster_platform.settings import Profile, get_settings


def executor_for(profile: Profile) -> dg.ExecutorDefinition:
    if profile == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return dg.in_process_executor


@dg.definitions
def defs() -> dg.Definitions:
    settings = get_settings()
    # runs propose actions too (incident reports): their notices go to the webhook as well
    notify.install(settings.webhook_url)
    return dg.Definitions.merge(
        assets.build_defs(settings),
        resources.defs,
        sensors.build_defs(settings),
        dg.Definitions(executor=executor_for(settings.profile)),
    )
