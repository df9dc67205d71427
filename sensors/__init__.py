"""Sensors and schedules."""

import dagster as dg

from dagster_platform.settings import Settings
from sensors.alert_sensors import incident_reports_job, new_alerts
from sensors.file_sensors import data_folder_changes
from sensors.finetune_sensors import finetune_job, new_feedback, nightly_finetune
from sensors.ontology_sensors import ontology_changes
from sensors.stream_sensors import build_stream_sensors, declarative_automation


def build_defs(settings: Settings) -> dg.Definitions:
    """Every sensor, schedule and job; the nightly cron comes from `settings`."""
    return dg.Definitions(
        sensors=[
            data_folder_changes,
            ontology_changes,
            *build_stream_sensors(settings),
            declarative_automation,
            new_alerts,
            new_feedback,
        ],
        schedules=[nightly_finetune(settings)],
        jobs=[incident_reports_job, finetune_job],
    )
