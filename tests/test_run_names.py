"""A flow run's report and preview are named after it; its logs hold the Dask dashboard's link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from test_flow import flow_logs

import spectroflow
from spectroflow.flows.spectrograms import spectrogram_flow
from spectroflow.params import DaskSettings

from conftest import DATA

pytestmark = pytest.mark.slow
WAV = sorted((DATA / "birdsongrec/Bird0/Wave").glob("*.wav"))[0]
DASHBOARD = re.compile(r"The Dask dashboard is available at http://127\.0\.0\.1:\d+/status")


def test_a_flow_run_names_its_report_and_preview_and_logs_the_dashboard(prefect_api, tmp_path):
    state = spectrogram_flow(source=[str(WAV)], destination=str(tmp_path),
                             dask=DaskSettings(n_workers=1), return_state=True)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    report = Path(state.result()["report"])
    assert re.fullmatch(rf"report-{re.escape(run.name)}-\d{{8}}T\d{{6}}Z-[0-9a-f]{{6}}\.csv", report.name)
    assert report.with_name(f"{report.stem}-preview.png").exists()
    assert any(DASHBOARD.fullmatch(m) for m in flow_logs(run.id)), "the run's logs hold the link"
    # The library, outside a flow, keeps its names.
    summary = spectroflow.run("wav", None, str(tmp_path / "library"), audio_files=[str(WAV)],
                              scheduler="synchronous")
    assert re.fullmatch(r"report-\d{8}T\d{6}Z-[0-9a-f]{6}\.csv", Path(summary.report).name)


def test_a_flow_run_on_a_cluster_by_address_logs_its_dashboard(prefect_api, tmp_path):
    from distributed import LocalCluster
    from prefect.settings import PREFECT_API_URL

    with LocalCluster(n_workers=1, processes=True, dashboard_address="127.0.0.1:0",
                      env={"PREFECT_API_URL": PREFECT_API_URL.value()}) as cluster:
        state = spectrogram_flow(source=[str(WAV)], destination=str(tmp_path),
                                 dask=DaskSettings(address=cluster.scheduler_address),
                                 return_state=True)
    assert state.is_completed(), state.message
    assert any(DASHBOARD.fullmatch(m) for m in flow_logs(state.state_details.flow_run_id))
