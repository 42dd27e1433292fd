"""Clusters beyond the local one: the worker setup arrives through Dask, and a cluster that cannot
do the run says so at once."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from distributed import Client, LocalCluster, WorkerPlugin, get_task_stream
from prefect import flow

from spectroflow.flows.spectrograms import spectrogram_flow
from spectroflow.orchestration import cluster as cluster_mod
from spectroflow.orchestration.cluster import run_batches, task_runner
from spectroflow.params import DaskSettings
from spectroflow.plan import prepare
from spectroflow.request import RunRequest

from conftest import (
    DATA,
    assert_matches_fingerprint,
    free_port,
    load_npz,
    upload_samples,
    wait_for,
)

pytestmark = pytest.mark.slow

WAV = DATA / "birdsongrec" / "Bird0" / "Wave" / "0.wav"


#: Run on workers started elsewhere, which cannot import this module: defined outside any module,
#: so that it reaches them by value.
_WORKER_VIEW = """
def worker_view():
    import os, sys
    import dask
    return {
        "api": os.environ.get("PREFECT_API_URL"),
        "malloc": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        "profile": dask.config.get("distributed.worker.profile.enabled"),
        "preloaded": "spectroflow.orchestration.worker_exit" in sys.modules,
        "cwd": os.getcwd(),
    }
"""
_namespace: dict = {}
exec(_WORKER_VIEW, _namespace)
_worker_view = _namespace["worker_view"]


@pytest.fixture
def bare_cluster(tmp_path):
    """A scheduler and two workers started as `dask` commands in another working directory, with
    nothing of spectroflow's setup: no PREFECT_API_URL, distributed's own Dask settings."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    env["DASK_LOGGING__DISTRIBUTED"] = "warning"
    bindir = Path(sys.executable).parent
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                               str(port), "--dashboard-address", ":0", "--no-show"],
                              env=env, cwd=elsewhere)]
    try:
        procs += [subprocess.Popen([str(bindir / "dask"), "worker", address, "--host",
                                    "127.0.0.1", "--nthreads", "1", "--no-dashboard", "--name",
                                    f"w{i}"], env=env, cwd=elsewhere) for i in range(2)]
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            before = client.run(_worker_view)
        yield address, before
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def test_an_existing_cluster_gets_the_worker_setup_through_dask(prefect_api, bare_cluster, s3,
                                                                 fingerprints):
    from prefect.settings import PREFECT_API_URL

    address, before = bare_cluster
    fs, bucket = s3
    upload_samples(fs, bucket)
    assert {v["api"] for v in before.values()} == {None}
    assert {v["malloc"] for v in before.values()} == {"65536"}, "distributed's own default"
    assert {v["profile"] for v in before.values()} == {True}
    options = {"client_kwargs": {"endpoint_url": fs.client_kwargs["endpoint_url"]}}
    state = spectrogram_flow(source=f"s3://{bucket}/audio/birdsongrec", audio_format="wav",
                             destination=f"s3://{bucket}/spect", storage_options=options,
                             dask=DaskSettings(address=address), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["counts"] == {"written": 20}
    path = f"s3://{bucket}/spect/Bird0/Wave/3.wav.spect.npz"
    assert_matches_fingerprint(load_npz(path, options),
                               fingerprints["default/birdsongrec/Bird0/3.wav.spect.npz"])
    with Client(address, timeout=60) as client:
        after = client.run(_worker_view)
    assert {v["api"].rstrip("/") for v in after.values()} == {PREFECT_API_URL.value().rstrip("/")}
    assert {v["malloc"] for v in after.values()} == {None}
    assert {v["profile"] for v in after.values()} == {False}
    assert all(v["preloaded"] for v in after.values())
    assert {v["cwd"] for v in after.values()} != {os.getcwd()}, "workers run elsewhere"


def test_a_run_asking_for_no_cluster_computes_on_the_configured_one(prefect_api, bare_cluster,
                                                                    monkeypatch, tmp_path):
    """How deployments/serve.py's runs share its warm cluster: DASK_SCHEDULER_ADDRESS."""
    address, _ = bare_cluster
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    with Client(address, timeout=60) as client, get_task_stream(client) as stream:
        state = spectrogram_flow(source=str(DATA / "birdsongrec" / "Bird0" / "Wave"),
                                 destination=str(tmp_path), batch_size=2, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["counts"] == {"written": 20}
    # One task a batch of two files, on that cluster's scheduler (whose workers the run's
    # setup may have restarted).
    assert len(stream.data) == 10, stream.data


def test_a_cluster_that_cannot_reach_the_api_or_see_the_files_fails_at_once(monkeypatch, tmp_path):
    hidden = tmp_path / "hidden"
    with LocalCluster(n_workers=1, processes=True, dashboard_address=":0") as local, \
            Client(local.scheduler_address) as client:
        runner = SimpleNamespace(client=client)
        settings = DaskSettings(address=local.scheduler_address, worker_timeout=30)
        monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
        with pytest.raises(cluster_mod.ClusterError,
                           match=r"1 Dask workers cannot reach the Prefect API at http://127\.0\.0\.1"
                                 r".*prefect server start --host 0\.0\.0\.0"):
            cluster_mod.check_workers(runner, settings, [])
        monkeypatch.delenv("PREFECT_API_URL")
        monkeypatch.setattr(cluster_mod, "api_url", lambda: None)
        with pytest.raises(cluster_mod.ClusterError,
                           match=re.escape(f"cannot see {hidden}): use a file system shared")):
            cluster_mod.check_workers(runner, settings, [str(hidden)])
        hidden.mkdir()
        cluster_mod.check_workers(runner, settings, [str(hidden)])


def test_a_cluster_without_workers_fails_after_the_timeout_saying_where_to_look():
    with LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as empty, \
            Client(empty.scheduler_address) as client:
        settings = DaskSettings(address=empty.scheduler_address, worker_timeout=1)
        with pytest.raises(cluster_mod.ClusterError, match="no Dask worker joined within 1 s"):
            cluster_mod.check_workers(SimpleNamespace(client=client), settings, [])


def test_batches_are_sized_for_the_workers_asked_for_not_only_those_present(prefect_api, sample_copy,
                                                                          tmp_path):
    # A job queue's workers join over minutes: sizing batches for the one present would give
    # the others nothing to take when they come. Here one worker of 2 threads is present.
    job_queue = "dask_jobqueue.SLURMCluster"
    asked = {  # the run's settings, and the worker threads its batches are sized for
        "n_workers": (dict(cluster_class=job_queue, n_workers=4), 8),
        "adapt_maximum": (dict(cluster_class=job_queue, adapt_maximum=6), 12),
        # An existing cluster asks for nothing: what is there is what there is.
        "address": ({}, 2),
    }

    @flow
    def sized(address: str) -> dict[str, tuple[str, int]]:
        said: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: said.append(record.getMessage())
        logging.getLogger("prefect.flow_runs").addHandler(handler)
        seen = {}
        try:
            with task_runner(DaskSettings(address=address)) as runner:
                for name, (options, _) in asked.items():
                    settings = DaskSettings(**options) if options else DaskSettings(address=address)
                    request = RunRequest.from_vak("wav", None, str(tmp_path / name),
                                                  audio_dir=str(sample_copy / "birdsongrec"))
                    batches: list = []
                    run_batches(runner, prepare(request).work, request.batch_spec(), settings,
                                None, batches.append)
                    (computing,) = [m for m in said if m.startswith("computing ")]
                    said.clear()
                    seen[name] = (computing, len(batches))
        finally:
            logging.getLogger("prefect.flow_runs").removeHandler(handler)
        return seen

    # The flow is given the address, not the cluster: its tasks carry the flow to the workers.
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                      dashboard_address=":0") as present:
        seen = sized(present.scheduler_address)
    for name, (_, threads) in asked.items():
        computing, n_batches = seen[name]
        assert computing.startswith(f"computing 20 files in {n_batches} tasks "), computing
        assert computing.endswith(f" on {threads} worker threads"), (name, computing)
    assert seen["n_workers"][1] > seen["address"][1], "more, smaller batches for workers to come"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare to give a worker its own mounts")
def test_workers_that_cannot_see_a_local_source_fail_the_flow_at_once(prefect_api, tmp_path):
    from prefect.settings import PREFECT_API_URL

    src = tmp_path / "hidden" / "src"
    src.mkdir(parents=True)
    shutil.copy(WAV, src)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    scheduler = subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--dashboard-address", ":0", "--no-show"],
                                 env=env)
    # The worker's own mount namespace hides tmp_path/hidden under an empty file system.
    worker = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs none {tmp_path / 'hidden'} && exec {bindir / 'dask'} worker {address} "
         "--host 127.0.0.1 --nthreads 1 --no-dashboard"], env=env)
    try:
        state = spectrogram_flow(source=str(src), destination=str(tmp_path / "out"),
                                 dask=DaskSettings(address=address, worker_timeout=120),
                                 return_state=True)
        assert state.is_failed()
        with pytest.raises(cluster_mod.ClusterError, match=re.escape(f"cannot see {src}")):
            state.result()
    finally:
        for proc in (worker, scheduler):
            proc.terminate()
            proc.wait(30)


@pytest.mark.parametrize(("options", "message"), [
    (["--dask-address", "tcp://127.0.0.1:1", "--workers", "2"],
     "give either --dask-address or settings for a new cluster, not both"),
    (["--cluster-class", "dask_jobqueue.SLURMCluster"],
     "dask_jobqueue.SLURMCluster starts no worker by itself: give --workers or --adapt-max"),
    (["--cluster-class", "x.Y", "--adapt-min", "3", "--adapt-max", "2"],
     "--adapt-min (3) exceeds --adapt-max (2)"),
    (["--cluster-class", "x.Y", "--workers", "1", "--cluster-kwargs", "{queue"],
     "--cluster-kwargs: not JSON"),
])
def test_cluster_options_that_cannot_work_fail_in_one_line(tmp_path, options, message):
    from typer.testing import CliRunner

    from spectroflow.cli import app

    result = CliRunner().invoke(app, ["run", str(tmp_path), str(tmp_path / "out"), *options])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {message}") and result.output.count("\n") == 1


def _worker_logs(capfd, marker: str) -> str:
    """What workers (child processes writing to this process's stderr) logged up to ``marker``."""
    seen = []

    def logged() -> bool:
        seen.append(capfd.readouterr().err)
        return marker in seen[-1]

    wait_for(logged, 30, f"a worker's log line {marker!r}")
    return "".join(seen)


def test_a_heartbeat_cut_by_the_closing_cluster_is_not_logged_as_an_error(prefect_api, capfd):
    """The run tells its workers before it closes their cluster: the heartbeat error distributed
    logs when the scheduler lets a worker go mid-heartbeat is dropped then, and only then."""
    heartbeat = "Failed to communicate with scheduler during heartbeat."

    def log(message: str) -> None:
        import logging

        logging.getLogger("distributed.worker").error(message)

    class LogsAsItCloses(WorkerPlugin):
        """Logs the heartbeat error as the worker closes, as a heartbeat cut short would."""

        def teardown(self, worker) -> None:
            log(heartbeat)
            log("the last line")

    @flow
    def closing() -> str:
        with task_runner(DaskSettings(n_workers=1, threads_per_worker=1)) as runner:
            runner.client.run(log, heartbeat)
            logged = _worker_logs(capfd, heartbeat)
            runner.client.register_plugin(LogsAsItCloses())
        return logged

    assert heartbeat in closing(), "logged while the cluster runs"
    assert heartbeat not in _worker_logs(capfd, "the last line")
