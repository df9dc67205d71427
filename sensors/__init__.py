"""Sensors and schedules."""

import dagster as dg

from sensors.file_sensors import data_folder_changes

defs = dg.Definitions(sensors=[data_folder_changes])
