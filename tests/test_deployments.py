"""Deployments from the project's own definitions, on a real ``prefect server`` on 127.0.0.1.

The server runs with its services (scheduler, event triggers), which the test harness does not
start: schedules and triggers need them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from conftest import DATA

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
WAVS = sorted((DATA / "birdsongrec/Bird0/Wave").glob("*.wav"))
NEVER = "0 3 1 1 *"  # once a year: schedules exist, but fire in no test


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server(tmp_path_factory):
    """``prefect server start`` with a fresh database; yields the API URL and the child env.

    One per test: deployments of ``prefect.yaml`` and of ``serve.py`` share names on purpose
    (they are the same deployments, run two ways) and would replace each other.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    log = open(tmp_path_factory.mktemp("logs") / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )

    def healthy():
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return proc.poll() is not None and pytest.fail("prefect server exited")

    try:
        wait_for(healthy, 120, "prefect server")
        with temporary_settings({PREFECT_API_URL: url}):
            yield url, env
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def post_event(api_url: str, name: str, resource_id: str) -> None:
    body = json.dumps([{"id": str(uuid.uuid4()), "occurred": datetime.now(timezone.utc).isoformat(),
                        "event": name, "resource": {"prefect.resource.id": resource_id}}]).encode()
    request = urllib.request.Request(f"{api_url}/events", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status in (200, 202, 204)


def wait_for_run(flow_run_id, timeout=240):
    with get_client(sync_client=True) as client:
        return wait_for(
            lambda: (run := client.read_flow_run(flow_run_id)).state.is_final() and run,
            timeout, f"flow run {flow_run_id}",
        )


def test_prefect_yaml_deploys_and_a_worker_runs_custom_parameters(server, tmp_path):
    url, env = server
    audio = tmp_path / "audio"
    audio.mkdir()
    for wav in WAVS[:2]:
        (audio / wav.name).write_bytes(wav.read_bytes())
    env = {**env, "SPECTROFLOW_SOURCE": str(audio), "SPECTROFLOW_DESTINATION": str(tmp_path / "spect")}
    prefect = [sys.executable, "-m", "prefect"]
    subprocess.run([*prefect, "work-pool", "create", "spectroflow", "--type", "process"],
                   env=env, check=True, capture_output=True)
    done = subprocess.run([*prefect, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

    with get_client(sync_client=True) as client:
        by_name = {d.name: d for d in client.read_deployments()}
        assert {"nightly", "on-demand", "ingest"} <= set(by_name)
        nightly = by_name["nightly"]
        assert nightly.tags == ["spectroflow", "scheduled"]
        assert nightly.work_pool_name == "spectroflow"
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
        assert nightly.parameters["source"] == str(audio)
        assert by_name["ingest"].parameter_openapi_schema["properties"]["objects"]
        # The parameter form: typed fields with descriptions and defaults.
        props = by_name["on-demand"].parameter_openapi_schema["properties"]
        assert "description" in props["labelset"] and props["audio_format"]["default"] == "wav"

    custom = {"source": str(audio), "destination": str(tmp_path / "custom"),
              "spect_params": {"fft_size": 256, "step_size": 32}, "dask": {"n_workers": 1}}
    run = run_deployment("spectrogram-flow/on-demand", parameters=custom, timeout=0)
    worker = subprocess.run(
        [*prefect, "worker", "start", "--pool", "spectroflow", "--run-once", "--limit", "1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    finished = wait_for_run(run.id, timeout=60)
    assert finished.state.is_completed(), worker.stdout[-3000:] + worker.stderr[-3000:]
    import numpy as np

    outs = sorted((tmp_path / "custom").glob("*.spect.npz"))
    assert [p.name for p in outs] == [f"{w.name}.spect.npz" for w in WAVS[:2]]
    with np.load(outs[0], allow_pickle=False) as npz:
        assert npz["s"].shape[0] == 129, "custom fft_size reached the run"


def test_served_deployments_run_on_request_and_on_events(server, s3, tmp_path):
    url, env = server
    fs, bucket = s3
    source, destination = f"s3://{bucket}/audio", f"s3://{bucket}/spect"
    fs.pipe(f"{bucket}/audio/a/{WAVS[0].name}", WAVS[0].read_bytes())
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "deployments/serve.py", "--source", source, "--destination", destination,
         "--nightly-cron", NEVER, "--ingest-cron", NEVER],
        env={**env, "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]}, cwd=ROOT,
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        with get_client(sync_client=True) as client:
            deployments = wait_for(
                lambda: (found := {d.name: d for d in client.read_deployments()}).keys()
                >= {"nightly", "on-demand", "ingest"} and found,
                120, "the three served deployments")
            ingest = deployments["ingest"]
            # The scheduler service fills in the schedule.
            scheduled = wait_for(lambda: client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[ingest.id]))), 60, "scheduled runs")
            assert all(r.state.is_scheduled() for r in scheduled)

        run = run_deployment("spectrogram-flow/on-demand", timeout=0,
                             parameters={"destination": f"s3://{bucket}/manual", "dask": {"n_workers": 1}})
        assert wait_for_run(run.id).state.is_completed()
        fs.invalidate_cache()
        assert fs.exists(f"{bucket}/manual/a/{WAVS[0].name}.spect.npz")

        # A bucket notification, relayed as an event, starts an ingest run for that object only.
        fs.pipe(f"{bucket}/audio/b/{WAVS[1].name}", WAVS[1].read_bytes())
        fs.pipe(f"{bucket}/audio/b/{WAVS[2].name}", WAVS[2].read_bytes())
        new_object = f"{source}/b/{WAVS[1].name}"

        def triggered_run():
            # Posted to the server's events API, as a relay of bucket notifications would; again
            # every few seconds, since the trigger service loads new automations periodically.
            if int(time.monotonic()) % 5 == 0:
                post_event(url, "spectroflow.audio.created", new_object)
            with get_client(sync_client=True) as client:
                return [r for r in client.read_flow_runs(limit=50)
                        if r.deployment_id == ingest.id and r.parameters.get("objects")]

        triggered = wait_for(triggered_run, 180, "a run started by the event")[0]
        assert triggered.parameters["objects"] == [f"{source}/b/{WAVS[1].name}"]
        assert wait_for_run(triggered.id).state.is_completed()
        fs.invalidate_cache()
        assert fs.exists(f"{bucket}/spect/b/{WAVS[1].name}.spect.npz")
        assert not fs.exists(f"{bucket}/spect/b/{WAVS[2].name}.spect.npz")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def finished_run(prefect_api, tmp_path_factory):
    """A finished run of the flow (two batch tasks of one file) on Prefect's test harness."""
    from flows.spectrograms import spectrogram_flow
    from spectroflow.params import DaskSettings

    out = tmp_path_factory.mktemp("finished-run")
    state = spectrogram_flow(source=[str(w) for w in WAVS[:2]], destination=str(out), batch_size=1,
                             dask=DaskSettings(n_workers=1), return_state=True)
    assert state.is_completed(), state.message
    return state


def test_tasks_carry_tags_that_concurrency_limits_can_name(finished_run):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[finished_run.state_details.flow_run_id])))
    tags = {run.name: set(run.tags) for run in runs}
    batches = {name: found for name, found in tags.items() if name.startswith("spectrograms-")}
    assert len(batches) == 2 and all(t == {"spectroflow", "spectroflow-batch"}
                                     for t in batches.values()), tags
    assert all(t == {"spectroflow"} for name, t in tags.items() if name not in batches), tags


def test_the_summary_is_persisted_for_callers_in_another_process(finished_run):
    """What ``run_deployment`` callers do: read the finished run from the API, then its result."""
    from prefect.settings import PREFECT_API_URL

    code = ("import json, sys; from prefect.client.orchestration import get_client\n"
            "with get_client(sync_client=True) as client:\n"
            "    print(json.dumps(client.read_flow_run(sys.argv[1]).state.result()))")
    done = subprocess.run([sys.executable, "-c", code, str(finished_run.state_details.flow_run_id)],
                          env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    assert payload["counts"] == {"written": 2} and payload["outputs"] == 2
    assert payload == json.loads(json.dumps(finished_run.result()))
    assert payload["report"].endswith(".csv") and Path(payload["report"]).exists()


def test_a_tag_concurrency_limit_runs_batches_one_at_a_time(prefect_api, tmp_path):
    """``prefect concurrency-limit create spectroflow-batch 1``, as an admin would, holds two
    workers to one batch at a time."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.spectrograms import spectrogram_flow
    from spectroflow.params import DaskSettings

    from prefect.settings import PREFECT_API_URL

    def cli(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "prefect", "concurrency-limit", *args], check=True,
                       env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
                       capture_output=True, timeout=120)

    cli("create", "spectroflow-batch", "1")
    try:
        state = spectrogram_flow(source=[str(w) for w in WAVS[:8]], destination=str(tmp_path),
                                 batch_size=2, dask=DaskSettings(n_workers=2), return_state=True)
    finally:
        cli("delete", "spectroflow-batch")
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    spans = sorted((r.start_time, r.end_time) for r in runs if r.name.startswith("spectrograms-"))
    assert len(spans) == 4
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), spans
