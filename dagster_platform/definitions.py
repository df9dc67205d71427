"""The code location: merges what `assets`, `resources` and `sensors` export."""

import dagster as dg

import assets
import resources
import sensors

defs = dg.Definitions.merge(assets.defs, resources.defs, sensors.defs)
