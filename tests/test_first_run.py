"""The README's first command on a fresh machine: no server, a new Prefect home, a slow start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA

ROOT = Path(__file__).resolve().parents[1]

#: Makes the temporary Prefect API (the process that serves Prefect's server application) answer
#: 25 s late, as it did on a fresh Prefect home on a busy two-core machine; Prefect's own limit
#: is 20 s.
SLOW_SERVER = """
import sys, time
if "prefect.server.api.server:create_app" in sys.orig_argv:
    time.sleep(25)
"""


@pytest.mark.slow
def test_flow_script_waits_for_a_slow_temporary_api_on_a_fresh_prefect_home(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_SERVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    recording = DATA / "birdsongrec" / "Bird0" / "Wave" / "3.wav"
    done = subprocess.run(
        [sys.executable, str(ROOT / "flows" / "spectrograms.py"), str(recording), "out"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'written': 1" in done.stdout
    # Workers import Prefect before they register, not while a task is unpickled.
    assert "Failed to initialize plugins" not in done.stderr, done.stderr[-3000:]
    # The terminal shows the run, not the cluster's machinery.
    assert "| INFO    | distributed." not in done.stderr, done.stderr[-3000:]
    with np.load(tmp_path / "out" / "3.wav.spect.npz") as npz:
        assert npz["s"].shape == (257, npz["t"].size)


def test_temporary_api_waits_longer_sends_no_telemetry_and_keeps_what_the_user_set(
        prefect_api, monkeypatch):
    # (With prefect_api, an API URL is set: no temporary server is started here.)
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED as ANALYTICS
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as LIMIT
    from prefect.settings import temporary_settings

    from spectroflow.orchestration.ephemeral import STARTUP_TIMEOUT, temporary_api

    monkeypatch.delenv(ANALYTICS.name, raising=False)
    monkeypatch.delenv(LIMIT.name, raising=False)
    with temporary_settings({ANALYTICS: True, LIMIT: 20}):
        with temporary_api():
            assert LIMIT.value() == STARTUP_TIMEOUT and ANALYTICS.value() is False
        assert LIMIT.value() == 20 and ANALYTICS.value() is True
        monkeypatch.setenv(LIMIT.name, "7")
        monkeypatch.setenv(ANALYTICS.name, "true")
        with temporary_api():
            assert LIMIT.value() == 20 and ANALYTICS.value() is True
