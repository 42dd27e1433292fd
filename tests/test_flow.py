"""The Prefect flow on real components: Prefect's test harness, LocalCluster, a separate Dask
scheduler and workers, and moto's S3 server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.clients import get_logs_subscriber
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL

from spectroflow import manifest, progress
from spectroflow.flows.spectrograms import spectrogram_flow
from spectroflow.orchestration import cluster as cluster_mod
from spectroflow.orchestration.cluster import IN_FLIGHT, run_batches, task_runner
from spectroflow.params import DaskSettings, SpectParams
from spectroflow.plan import prepare
from spectroflow.request import RunRequest

from conftest import (
    REFERENCE_PARAMS,
    WAVS,
    assert_matches_fingerprint,
    load_npz,
    sample_path,
    upload_samples,
)

pytestmark = pytest.mark.slow
TWO_WORKERS = DaskSettings(n_workers=2)


def flow_logs(flow_run_id, until=lambda messages: True, timeout: float = 20.0) -> list[str]:
    """The run's log messages, once ``until(messages)`` holds (workers send logs in batches
    every couple of seconds, so the last ones can land after the flow run has ended): those the
    API has, then those it streams as they arrive, for at most ``timeout`` seconds."""
    APILogHandler().flush()
    return asyncio.run(_flow_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                  until, timeout))


async def _flow_logs(log_filter: LogFilter, until, timeout: float) -> list[str]:
    logs = {}

    def messages() -> list[str]:
        return [log.message for log in sorted(logs.values(), key=lambda log: log.timestamp)]

    async def read_stored() -> None:
        async with get_client() as client:
            offset = 0
            while page := await client.read_logs(log_filter, limit=200, offset=offset):
                logs.update((log.id, log) for log in page)
                offset += len(page)

    with anyio.move_on_after(timeout):
        # Subscribed before reading what is stored: a log then reaches one or the other.
        async with get_logs_subscriber(filter=log_filter) as stream:
            await read_stored()
            if until(messages()):
                return messages()
            async for log in stream:
                logs[log.id] = log
                if until(messages()):
                    return messages()
    # A log sent while the subscription started can reach neither: read once more.
    await read_stored()
    return messages()


def written_files(messages: list[str]) -> list[str]:
    """The outputs named by the runs' "wrote N files:" records, a line each."""
    return sorted(line for m in messages if m.startswith("wrote ") for line in m.splitlines()[1:])


@pytest.fixture
def worker_processes(monkeypatch):
    """Runs of the sample's few files compute in worker processes, as large runs do."""
    monkeypatch.setattr(cluster_mod, "SMALL_RUN_FILES", 0)


def test_local_flow_matches_vak_with_annotations_and_logs_every_decision(prefect_api, sample_copy, tmp_path,
                                                                        fingerprints, capfd,
                                                                        worker_processes):
    out = tmp_path / "spect"
    state = spectrogram_flow(
        source=str(sample_copy / "gy6or6"), destination=str(out), audio_format="cbin",
        spect_params=SpectParams(**REFERENCE_PARAMS["tweety"]), annot_format="notmat",
        labelset="iabcdefghjk", dask=TWO_WORKERS, batch_size=2, return_state=True,
    )
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["counts"] == {"written": 6}
    for path in out.rglob("*.spect.npz"):
        assert_matches_fingerprint(load_npz(path), fingerprints[f"tweety/gy6or6/032312/{path.name}"])
    messages = flow_logs(state.state_details.flow_run_id, lambda ms: len(written_files(ms)) >= 6)
    assert any(m.startswith("discovered 6 .cbin") for m in messages)
    assert written_files(messages) == sorted(map(str, out.rglob("*.spect.npz"))), \
        "worker-side decisions reach the run logs"
    assert sum(m.startswith("wrote 2 files:") for m in messages) == 3, "a record per batch"
    assert any("batch 2 done" in m for m in messages)
    console = capfd.readouterr().err
    assert "batch 2 done" in console
    assert "spectroflow.pipeline - wrote" not in console, "per-file lines go to the run logs only"

    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
            if a.key is not None}  # the persisted result is stored as an artifact with no key
    assert sorted(artifacts) == ["spectroflow-report", "spectroflow-results", "spectroflow-summary"]
    table = artifacts["spectroflow-results"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert len(table) == 6 and {row["status"] for row in table} == {"written"}
    assert "| written | 6 |" in artifacts["spectroflow-summary"].data
    assert "data:image/png;base64," in artifacts["spectroflow-summary"].data
    previews = list((out / "spectroflow-reports").glob("*-preview.png"))
    assert len(previews) == 1 and previews[0].read_bytes().startswith(b"\x89PNG")
    rows = manifest.read(out)
    assert summary["manifest"] == str(out / manifest.MANIFEST_NAME)
    assert sorted(r["spect_path"] for r in rows) == sorted(map(str, out.rglob("*.spect.npz")))
    assert {(r["status"], r["annot_format"]) for r in rows} == {("ok", "notmat")}


def test_labelset_skips_and_failures_end_the_run_failed_naming_files(prefect_api, sample_copy, tmp_path,
                                                                    capfd, worker_processes):
    (sample_copy / "gy6or6/032312/gy6or6_baseline_230312_0808.138.cbin").write_bytes(b"\1")
    state = spectrogram_flow(
        source=str(sample_copy / "gy6or6"), destination=str(tmp_path / "out"), audio_format="cbin",
        annot_format="notmat", labelset="iabcdefghj", dask=TWO_WORKERS, return_state=True,
    )
    assert state.is_completed() and state.result()["counts"] == {"skipped": 6}
    messages = flow_logs(state.state_details.flow_run_id)
    assert sum("are not in the labelset" in m for m in messages) == 6

    state = spectrogram_flow(
        source=str(sample_copy / "gy6or6"), destination=str(tmp_path / "out"), audio_format="cbin",
        dask=TWO_WORKERS, return_state=True,
    )
    assert state.is_failed()
    assert "1 files failed" in state.message and "0808.138.cbin" in state.message
    summary = state.result(raise_on_failure=False)
    assert summary["counts"] == {"written": 5, "failed": 1}
    assert Path(summary["report"]).read_text().count("failed") == 1
    console = capfd.readouterr().err
    assert "spectroflow.pipeline - failed" in console, "workers' warnings reach the console"


def test_a_name_that_is_not_utf8_reaches_the_logs_artifacts_and_result(prefect_api, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    latin1 = src / "caf\udce9.wav"  # an old recorder's Latin-1 name, as Python reads it
    latin1.write_bytes(sample_path("birdsongrec/Bird0/1.wav").read_bytes())
    (src / "empty.wav").write_bytes(b"")
    state = spectrogram_flow(source=str(src), destination=str(out), dask=DaskSettings(n_workers=1),
                             return_state=True)
    assert state.is_failed(), state.message
    summary = state.result(raise_on_failure=False)
    assert summary["counts"] == {"written": 1, "failed": 1}
    assert summary["report"] and summary["manifest"]
    assert (out / "caf\udce9.wav.spect.npz").exists()
    messages = flow_logs(state.state_details.flow_run_id,
                         lambda ms: any(m.startswith("wrote 1 files") for m in ms))
    assert any(m == f"wrote 1 files:\n{out}/caf\\xe9.wav.spect.npz" for m in messages), messages

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))

    found = {a.key: a for a in asyncio.run(artifacts())}
    sources = [row["source"] for row in json.loads(found["spectroflow-results"].data)]
    assert "caf\\xe9.wav" in sources, sources


def test_progress_reaches_listeners_file_by_file_from_the_workers(prefect_api, sample_copy, tmp_path):
    seen = []
    with progress.listen(lambda done, total: seen.append((done, total))):
        state = spectrogram_flow(source=str(sample_copy / "birdsongrec"), destination=str(tmp_path / "out"),
                                 audio_format="wav", dask=TWO_WORKERS, batch_size=20, return_state=True)
    assert state.is_completed(), state.message
    assert seen[0] == (0, 20) and seen[-1] == (20, 20)
    counts = [done for done, _ in seen]
    assert counts == sorted(counts), "the count never goes back"
    assert any(0 < done < 20 for done in counts), "files are counted as they finish, within their one batch"


def test_dask_holds_only_the_batches_in_flight(prefect_api, sample_copy, tmp_path):
    settings = DaskSettings(n_workers=1)

    @flow
    def run():
        request = RunRequest.from_vak("wav", None, str(tmp_path / "out"),
                                      audio_dir=str(sample_copy / "birdsongrec"))
        plan = prepare(request)
        held, results = [], []
        with task_runner(settings) as runner:
            def on_batch(batch):
                results.extend(batch)
                held.append(runner.client.run_on_scheduler(
                    lambda dask_scheduler: len(dask_scheduler.tasks)))

            run_batches(runner, plan.work, request.batch_spec(), settings, 2, on_batch)
        return held, results

    held, results = run()
    assert len(results) == 20 and {r.status for r in results} == {"written"}
    assert len(held) == 10
    # The batches in flight, and the one just finished, whose future the flow still holds.
    assert max(held) <= IN_FLIGHT + 1, held


def _callback_periods(server) -> dict[str, float]:
    return {name: pc.callback_time for name, pc in server.periodic_callbacks.items()}


def test_local_clusters_run_without_the_profiler_or_logs_and_check_health_less_often(prefect_api):
    @flow
    def periodic_callbacks():
        with task_runner(TWO_WORKERS) as runner:
            workers = runner.client.run(lambda dask_worker: _callback_periods(dask_worker))
            scheduler = runner.client.run_on_scheduler(
                lambda dask_scheduler: _callback_periods(dask_scheduler))
            logs = runner.client.run_on_scheduler(lambda dask_scheduler: [
                dask_scheduler.transition_log.maxlen,
                *(stream.recent_message_log.maxlen
                  for stream in dask_scheduler.stream_comms.values())])
            return workers, scheduler, logs

    workers, scheduler, logs = periodic_callbacks()
    assert len(workers) == 2 and all("heartbeat" in periods for periods in workers.values())
    assert not any("profile" in periods for periods in workers.values()), \
        "sys._current_frames can deadlock"
    # In ms; distributed's defaults are 20 (tick), 500 (monitor) and 100 (memory_monitor).
    for periods in [*workers.values(), scheduler]:
        assert periods["tick"] == 500 and periods["monitor"] == 2000
    assert all(periods["memory_monitor"] == 500 for periods in workers.values())
    # Developers' logs would keep every batch's work items (in the task messages) in the flow process.
    assert logs == [0, 0, 0]


#: Defined outside any module, so that it reaches workers by value: unpickling a function of
#: this test module would import the module, and with it Prefect.
_IMPORTED_AHEAD = """
def imported_ahead(timeout=60):
    import sys, threading
    for thread in threading.enumerate():
        if thread.name == "spectroflow-imports":
            thread.join(timeout)
    return sorted({"prefect", "prefect_dask", "spectroflow.orchestration.tasks"} & set(sys.modules))
"""


def test_local_workers_import_what_tasks_need_before_any_task_arrives(prefect_api):
    namespace = {}
    exec(_IMPORTED_AHEAD, namespace)

    @flow
    def imported():
        with task_runner(TWO_WORKERS) as runner:
            return runner.client.run(namespace["imported_ahead"])

    assert list(imported().values()) == [["prefect", "prefect_dask", "spectroflow.orchestration.tasks"]] * 2


def test_s3_flow_with_defaults_from_aws_environment(prefect_api, s3, fingerprints):
    fs, bucket = s3
    upload_samples(fs, bucket)
    summary = spectrogram_flow(source=f"s3://{bucket}/audio", destination=f"s3://{bucket}/spect",
                               audio_format="wav")
    assert summary["counts"] == {"written": 20}
    outputs = sorted(fs.glob(f"{bucket}/spect/**/*.spect.npz"))
    assert len(outputs) == 20
    ref = fingerprints["default/birdsongrec/Bird0/10.wav.spect.npz"]
    assert_matches_fingerprint(load_npz(f"s3://{bucket}/spect/birdsongrec/Bird0/Wave/10.wav.spect.npz"), ref)
    assert fs.glob(f"{bucket}/spect/spectroflow-reports/*.csv")
    rows = manifest.read(f"s3://{bucket}/spect")
    assert sorted(r["spect_path"] for r in rows) == [f"s3://{p}" for p in outputs]
    assert {r["status"] for r in rows} == {"ok"} and all(float(r["duration"]) > 0 for r in rows)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dask_cluster_processes():
    """A scheduler and two workers (three threads) started as separate processes on 127.0.0.1."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    # As the README asks of existing clusters: no worker profiler (it can deadlock on Python 3.11).
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "DASK_LOGGING__DISTRIBUTED": "warning",
           "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}
    bindir = Path(sys.executable).parent
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0", "--no-show"], env=env)]
    procs += [subprocess.Popen([str(bindir / "dask"), "worker", address, "--host", "127.0.0.1",
                                "--nthreads", str(i + 1), "--no-dashboard", "--name", f"w{i}"], env=env)
              for i in range(2)]
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
    yield address
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)


def test_flow_on_an_existing_cluster_by_address(prefect_api, dask_cluster_processes, sample_copy, tmp_path,
                                               fingerprints):
    out = tmp_path / "out"
    state = spectrogram_flow(
        source=str(sample_copy / "birdsongrec"), destination=str(out), audio_format="wav",
        annot_format="birdsong-recognition-dataset", labelset="range: 0-7",
        dask=DaskSettings(address=dask_cluster_processes), batch_size=3, return_state=True,
    )
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["counts"] == {"written": 9, "skipped": 11, "missing_audio": 115}
    for path in out.rglob("*.spect.npz"):
        assert_matches_fingerprint(load_npz(path), fingerprints[f"default/birdsongrec/Bird0/{path.name}"])
    messages = flow_logs(state.state_details.flow_run_id, lambda ms: len(written_files(ms)) >= 9)
    assert written_files(messages) == sorted(map(str, out.rglob("*.spect.npz")))
    assert any("on 3 worker threads" in m for m in messages), "batches are sized for that cluster"


def test_the_flow_runs_from_a_script_on_standard_input(prefect_api, tmp_path):
    """A local cluster's workers start by running the parent's main script again, which a
    script read from standard input does not have (before: "Nanny failed to start")."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    script = ("from spectroflow.flows.spectrograms import spectrogram_flow\n"
              f"state = spectrogram_flow({[str(w) for w in WAVS[:2]]!r}, {str(tmp_path / 'out')!r}, "
              "dask={'n_workers': 1}, return_state=True)\n"
              "print(state.result()['counts'])\n")
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path,
                          env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "{'written': 2}", done.stderr[-3000:]


def test_a_small_run_computes_in_the_flows_process(prefect_api, sample_copy, tmp_path, fingerprints):
    """A few files start no worker process: a local cluster of threads computes them, with the
    same outputs, logs and stop as worker processes'."""
    out = tmp_path / "spect"
    state = spectrogram_flow(source=str(sample_copy / "gy6or6"), destination=str(out),
                             audio_format="cbin", spect_params=SpectParams(**REFERENCE_PARAMS["tweety"]),
                             batch_size=2, dask=TWO_WORKERS, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["counts"] == {"written": 6}
    for path in out.rglob("*.spect.npz"):
        assert_matches_fingerprint(load_npz(path), fingerprints[f"tweety/gy6or6/032312/{path.name}"])
    messages = flow_logs(state.state_details.flow_run_id, lambda ms: len(written_files(ms)) >= 6)
    assert any(m.startswith("a small run (6 files): computing on a local Dask cluster of threads")
               for m in messages), messages
    assert written_files(messages) == sorted(map(str, out.rglob("*.spect.npz")))
    assert sum("batch" in m and "done" in m for m in messages) == 3
