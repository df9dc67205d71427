"""The code location: merges what `assets`, `resources` and `sensors` export.

Runs execute in process: every warehouse writer shares one pool slot anyway, and a run that
does not start a process per step starts landing seconds sooner.
"""

import dagster as dg

import assets
import resources
import sensors

defs = dg.Definitions.merge(
    assets.defs,
    resources.defs,
    sensors.defs,
    dg.Definitions(executor=dg.in_process_executor),
)
