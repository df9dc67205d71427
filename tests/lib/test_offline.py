"""Every process of the platform starts with the model hub offline, and importing peft (which
imports bitsandbytes, which asks the hub for a kernel) prints nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = (
    "import dagster_platform, os, peft; print('HF_HUB_OFFLINE=' + os.environ['HF_HUB_OFFLINE'])"
)


def _run(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.slow
def test_the_platform_keeps_the_hub_offline_and_peft_quiet() -> None:
    result = _run()
    assert result.stdout.strip() == "HF_HUB_OFFLINE=1"
    assert "kernels-community" not in result.stderr and "trust" not in result.stderr


def test_an_explicit_online_hub_wins() -> None:
    assert _run(HF_HUB_OFFLINE="0").stdout.strip() == "HF_HUB_OFFLINE=0"
