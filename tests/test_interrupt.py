"""Stopping ``spectroflow run`` early: Ctrl-C in its terminal, ``kill -INT``, a cancel in Prefect.

Each run is a real command in its own session (as a terminal's foreground job), with a local
cluster; it is stopped once it reports a few files done. It must exit 130 within seconds with the
summary so far, leave every output whole or absent, record the run as Cancelled, leave no
process behind, and a rerun must finish the rest.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from spectroflow import manifest, provenance
from spectroflow.flows.spectrograms import spectrogram_flow
from spectroflow.params import DaskSettings

from conftest import WAVS, OutputLines, report_rows

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SPECTROFLOW = Path(sys.executable).parent / "spectroflow"
COPIES = 5
TOTAL = COPIES * len(WAVS)
#: Outputs to wait for before stopping the run: it is then computing, far from its end.
STARTED = 6
#: Seconds from the signal (or the cancel) to the command's exit.
EXIT_WITHIN = 10
#: The command's ``sitecustomize``: one more progress listener, as its progress bar gets, that
#: writes "done total" lines to the pipe whose descriptor the test passes. Child processes do not
#: inherit the variable.
REPORT_PROGRESS = """
import os

if "SPECTROFLOW_TEST_PROGRESS_FD" in os.environ:
    from spectroflow import progress

    _pipe = os.fdopen(int(os.environ.pop("SPECTROFLOW_TEST_PROGRESS_FD")), "w", buffering=1)
    _listening = progress.listen(lambda done, total: print(done, total, file=_pipe))
    _listening.__enter__()  # for the process's life: kept here, or collected and left at once
"""


def _recordings(folder: Path) -> Path:
    """``COPIES`` folders of hard links to the sample recordings (copies across filesystems)."""
    for i in range(COPIES):
        for wav in WAVS:
            dest = folder / f"rep{i}" / wav.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(wav, dest)
            except OSError:
                dest.write_bytes(wav.read_bytes())
    return folder


def _start(audio: Path, out: Path, log: Path, api_url: str | None = None,
           prefix: tuple[str, ...] = (), options: tuple[str, ...] = ()
           ) -> tuple[subprocess.Popen, OutputLines]:
    """``spectroflow run`` on 2 workers in batches of 5, in a new session; its console (standard
    error) goes to ``log``. With ``api_url`` it runs the flow on that API; without, on this
    machine's cores with the library, or with ``options=("--flow",)`` as a flow on Prefect's
    temporary API, as for a user. Also returns its progress: the lines of
    :data:`REPORT_PROGRESS`.
    """
    site = log.parent / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(REPORT_PROGRESS)
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    env |= {"AWS_EC2_METADATA_DISABLED": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "COLUMNS": "300"}  # rich wraps the summary at 80 columns otherwise
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    read, write = os.pipe()
    env["SPECTROFLOW_TEST_PROGRESS_FD"] = str(write)
    try:
        with open(log, "wb") as console:
            proc = subprocess.Popen(
                [*prefix, str(SPECTROFLOW), "run", str(audio), str(out), "--workers", "2",
                 "--batch-size", "5", *options],
                cwd=ROOT, env=env, stdout=console, stderr=console, start_new_session=True,
                pass_fds=(write,))
    finally:
        os.close(write)
    return proc, OutputLines(os.fdopen(read))


def _wait_for_outputs(progress: OutputLines, log: Path, timeout: float = 180) -> None:
    """Until the command reports :data:`STARTED` files done (so written)."""
    started = progress.wait_for(lambda line: int(line.split()[0]) >= STARTED, timeout)
    assert started, (f"fewer than {STARTED} files done in {timeout} s, or the command ended:\n"
                     + log.read_text(errors="replace"))


def _wait_for_exit(proc: subprocess.Popen, log: Path) -> float:
    """Seconds until ``proc`` exits; its session is killed if it takes longer than allowed."""
    start = time.monotonic()
    try:
        proc.wait(timeout=EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"still running {EXIT_WITHIN} s after being stopped:\n"
                    + log.read_text(errors="replace"))
    return time.monotonic() - start


def _session_left(sid: int, timeout: float = 10) -> list[psutil.Process]:
    """Live processes of session ``sid`` (its workers, the API server), once they had
    ``timeout`` seconds to go (multiprocessing's resource tracker exits after its parent)."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for process in psutil.process_iter(["status"]):
            try:
                if os.getsid(process.pid) == sid and process.info["status"] != psutil.STATUS_ZOMBIE:
                    left.append(process)
            except (ProcessLookupError, PermissionError):
                continue
        if not left or time.monotonic() > deadline:
            return left
        _wait_for_exits(left, deadline - time.monotonic())


def _wait_for_exits(processes: list[psutil.Process], timeout: float) -> None:
    """Until each of ``processes`` exits, or ``timeout`` seconds pass. Not psutil's wait: these
    are not our children, and an exited one stays a zombie here (nothing reaps orphans), which
    psutil takes for alive; a pidfd is readable from the exit on."""
    poller, pidfds = select.poll(), []
    try:
        for process in processes:
            try:
                pidfds.append(os.pidfd_open(process.pid))
            except ProcessLookupError:
                continue
            poller.register(pidfds[-1], select.POLLIN)
        deadline = time.monotonic() + timeout
        waiting = len(pidfds)
        while waiting and (left := deadline - time.monotonic()) > 0:
            for pidfd, _ in poller.poll(left * 1000):
                poller.unregister(pidfd)
                waiting -= 1
    finally:
        for pidfd in pidfds:
            os.close(pidfd)


def _summary(stderr: str) -> tuple[int, int]:
    """(files written, files not done) from the command's summary."""
    written = re.search(r"^(\d+) written$", stderr, re.M)
    stopped = re.search(r"^stopped \((.+)\): (\d+) files not done; run the same command again",
                        stderr, re.M)
    assert written, f"no summary:\n{stderr}"
    assert stopped, f"no summary of a stopped run:\n{stderr}"
    return int(written.group(1)), int(stopped.group(2))


def _assert_whole_or_absent(out: Path) -> int:
    """Every output loads with its four arrays, every marker names an output, and nothing else
    is there but hidden temporary files; returns the number of outputs."""
    outputs = 0
    for path in out.rglob("*"):
        rel = path.relative_to(out).as_posix()
        if path.is_dir() or rel.startswith(("spectroflow-reports/", provenance.MARKERS_DIR)):
            continue
        if rel in (manifest.MANIFEST_NAME, manifest.METADATA_NAME, f".{manifest.MANIFEST_NAME}.lock"):
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue  # a write cut short; never read
        assert path.name.endswith(".spect.npz"), rel
        with np.load(path, allow_pickle=False) as npz:
            assert sorted(npz.files) == ["audio_path", "f", "s", "t"], rel
            assert npz["s"].shape == (npz["f"].shape[0], npz["t"].shape[0]), rel
        outputs += 1
    for marked in provenance.markers(str(out)):
        assert (out / marked).is_file(), f"a marker without its output: {marked}"
    for row in manifest.read(out):  # the manifest of a stopped run names only whole outputs
        assert row["status"] != "ok" or Path(row["spect_path"]).is_file(), row
    return outputs


def _assert_rerun_finishes(audio: Path, out: Path, written_before: int) -> None:
    rerun = spectrogram_flow(source=str(audio), destination=str(out),
                             dask=DaskSettings(n_workers=2), return_state=True)
    assert rerun.is_completed(), rerun.message
    counts = rerun.result()["counts"]
    assert counts.get("up_to_date", 0) >= written_before, counts
    assert counts.get("up_to_date", 0) + counts.get("written", 0) == TOTAL, counts
    assert _assert_whole_or_absent(out) == TOTAL


def _flow_run(out: Path):
    """The flow run that wrote to ``out``, as the API has it."""
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=50)
    return next(run for run in runs if run.parameters.get("destination") == str(out))


def _assert_stopped_cleanly(proc: subprocess.Popen, log: Path, reason: str,
                           code: int = 130) -> int:
    """Exit ``code``, the summary so far, no traceback, no process left; returns the files
    written."""
    stderr = log.read_text(errors="replace")
    assert proc.returncode == code, stderr
    written, not_done = _summary(stderr)
    assert not_done > 0, stderr
    assert written + not_done == TOTAL, stderr
    assert f"stopped ({reason})" in stderr
    # Workers killed by the signal, or a run that could not reach its API, show here.
    for sign in ("Traceback", "KeyboardInterrupt", "ConnectError", "Error logging to API"):
        assert sign not in stderr, stderr
    assert not _session_left(proc.pid)
    return written


@pytest.mark.parametrize("how", ["flow", "library"])
def test_ctrl_c_stops_the_run_with_its_summary_and_a_rerun_finishes(prefect_api, tmp_path, how):
    """Ctrl-C reaches the command's whole process group: its temporary API and its workers
    too, unless they are shielded (before, the API died and the command hung for minutes)."""
    audio, out, log = _recordings(tmp_path / "audio"), tmp_path / "out", tmp_path / "console"
    proc, progress = _start(audio, out, log, options=("--flow",) if how == "flow" else ())
    _wait_for_outputs(progress, log)
    os.killpg(proc.pid, signal.SIGINT)
    seconds = _wait_for_exit(proc, log)
    print(f"Ctrl-C: exit {proc.returncode} {seconds:.1f} s after the signal")
    # The summary comes back from the flow call only once the API took the final state.
    written = _assert_stopped_cleanly(proc, log, "interrupted (SIGINT)")
    assert _assert_whole_or_absent(out) >= written
    _assert_rerun_finishes(audio, out, written)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_kill_int_stops_the_run_cancelled_in_prefect(prefect_api, tmp_path, sigint):
    """``kill -INT`` reaches the main process alone. ``ignored``: started as a shell script's
    background job is, with SIGINT ignored (before, the run then went on to its end)."""
    from prefect.settings import PREFECT_API_URL

    audio, out, log = _recordings(tmp_path / "audio"), tmp_path / "out", tmp_path / "console"
    prefix = ("sh", "-c", 'trap "" INT; exec "$@"', "sh") if sigint == "ignored" else ()
    proc, progress = _start(audio, out, log, PREFECT_API_URL.value(), prefix)
    _wait_for_outputs(progress, log)
    os.kill(proc.pid, signal.SIGINT)
    seconds = _wait_for_exit(proc, log)
    print(f"kill -INT ({sigint}): exit {proc.returncode} {seconds:.1f} s after the signal")
    written = _assert_stopped_cleanly(proc, log, "interrupted (SIGINT)")
    run = _flow_run(out)
    assert run.state.is_cancelled(), run.state
    assert _assert_whole_or_absent(out) >= written
    _assert_rerun_finishes(audio, out, written)


def test_cancel_in_prefect_stops_the_run_and_its_workers(prefect_api, tmp_path):
    """As the UI's Cancel button does: the run's state is set to Cancelling through the API."""
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL
    from prefect.states import State

    audio, out, log = _recordings(tmp_path / "audio"), tmp_path / "out", tmp_path / "console"
    proc, progress = _start(audio, out, log, PREFECT_API_URL.value())
    _wait_for_outputs(progress, log)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "spawn_main" in " ".join(p.cmdline())]
    assert len(workers) == 2, workers
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(_flow_run(out).id, State(type=StateType.CANCELLING))
    seconds = _wait_for_exit(proc, log)
    print(f"cancel in Prefect: exit {proc.returncode} {seconds:.1f} s after the cancel")
    written = _assert_stopped_cleanly(proc, log, "cancelled in Prefect (Cancelling)")
    assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
                   for worker in workers)
    run = _flow_run(out)
    assert run.state.is_cancelled(), run.state
    assert _assert_whole_or_absent(out) >= written
    _assert_rerun_finishes(audio, out, written)


#: Run on a worker (sent by value): the recording named ``slow`` waits for the Dask event
#: ``release`` before it is processed, so its batch is still in it when the run's grace ends.
_SLOW_FILE = """
def arm(slow, release):
    import distributed
    from spectroflow import pipeline

    real = pipeline.process_file

    def process_file(item, spec):
        if item.source.endswith(slow):
            distributed.Event(release).wait(120)
        return real(item, spec)

    pipeline.process_file = process_file
"""


def test_files_a_cancelled_batch_finished_are_in_the_report_of_the_stopped_run(
        prefect_api, tmp_path, monkeypatch):
    """A batch still in a file :data:`~spectroflow.orchestration.cluster.STOP_GRACE` seconds
    after the stop is cancelled; the files it had finished are whole and marked, and the run's
    report lists them (before, only the next run found them, up to date)."""
    import threading
    import uuid

    from distributed import Client, Event, LocalCluster
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL
    from prefect.states import State

    from spectroflow import progress
    from spectroflow.orchestration import cluster as cluster_mod

    from conftest import set_up_workers, some_wavs

    monkeypatch.setattr(cluster_mod, "STOP_GRACE", 1.0)
    audio, out = some_wavs(tmp_path / "audio", 6), tmp_path / "out"
    names = sorted(path.name for path in audio.iterdir())  # planned in this order, 3 a batch
    slow, release = names[2], f"release-{uuid.uuid4().hex}"
    namespace: dict = {}
    exec(_SLOW_FILE, namespace)
    two_done = threading.Event()

    def on_progress(done: int, total: int) -> None:
        if done >= 2:
            two_done.set()

    def cancel_once_two_are_done() -> None:
        if two_done.wait(120):
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(_flow_run(out).id, State(type=StateType.CANCELLING))

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env={"PREFECT_API_URL": PREFECT_API_URL.value()}) as cluster, \
            Client(cluster) as client:
        set_up_workers(client)
        client.run(namespace["arm"], slow, release)
        canceller = threading.Thread(target=cancel_once_two_are_done)
        canceller.start()
        try:
            with progress.listen(on_progress):
                state = spectrogram_flow(source=str(audio), destination=str(out), batch_size=3,
                                         dask=DaskSettings(address=cluster.scheduler_address),
                                         return_state=True)
        finally:
            two_done.set()  # the canceller ends, whatever happened
            canceller.join()
            Event(release, client=client).set()  # the slow file's thread ends
    assert state.is_cancelled(), state.message
    outcome = state.result(raise_on_failure=False)
    assert outcome["counts"] == {"written": 2}, outcome
    assert outcome["not_done"] == 4, outcome
    rows = {Path(source).name: row for source, row in report_rows(outcome["report"]).items()}
    assert sorted(rows) == names[:2]
    assert all(row["status"] == "written" and "cancelled" in row["reason"]
               and Path(row["output"]).is_file() for row in rows.values()), rows
    assert _assert_whole_or_absent(out) >= 2


@pytest.mark.parametrize("to", ["process", "group", "group-library"])
def test_sigterm_stops_the_run_as_ctrl_c_does(prefect_api, tmp_path, to):
    """How SLURM, Kubernetes, systemd and ``timeout`` stop a job. ``process``: ``kill -TERM``,
    to the flow on a server's API; ``group``: the whole process group, as ``timeout`` signals
    it, to the flow with the temporary API (before, it died with the group and the command hung
    for minutes); ``group-library``: the same to a run on this machine's cores."""
    from prefect.settings import PREFECT_API_URL

    audio, out, log = _recordings(tmp_path / "audio"), tmp_path / "out", tmp_path / "console"
    api_url = PREFECT_API_URL.value() if to == "process" else None
    proc, progress = _start(audio, out, log, api_url,
                            options=() if to == "group-library" else ("--flow",))
    _wait_for_outputs(progress, log)
    servers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "prefect.server.api.server:create_app" in p.cmdline()]
    assert len(servers) == (1 if to == "group" else 0), servers
    if to == "process":
        os.kill(proc.pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    seconds = _wait_for_exit(proc, log)
    print(f"SIGTERM to the {to}: exit {proc.returncode} {seconds:.1f} s after the signal")
    written = _assert_stopped_cleanly(proc, log, "terminated (SIGTERM)", code=143)
    _wait_for_exits(servers, 10)
    assert not [server for server in servers if server.is_running()
                and server.status() != psutil.STATUS_ZOMBIE], "the temporary API is stopped"
    if api_url:
        assert _flow_run(out).state.is_cancelled()
    assert _assert_whole_or_absent(out) >= written
    _assert_rerun_finishes(audio, out, written)


def test_sigterm_to_serve_stops_its_flow_runs_cancelled_with_their_reports(prefect_api, tmp_path):
    """``deployments/serve.py`` stopped as a service manager stops it, while a run computes."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    audio, out, log = _recordings(tmp_path / "audio"), tmp_path / "out", tmp_path / "serve"
    never = "0 3 1 1 *"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "AWS_EC2_METADATA_DISABLED": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with open(log, "wb") as console:
        serve = subprocess.Popen(
            [sys.executable, "deployments/serve.py", "--source", str(audio), "--destination",
             str(out), "--nightly-cron", never, "--ingest-cron", never],
            cwd=ROOT, env=env, stdout=console, stderr=console, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "being served" not in log.read_text(errors="replace"):
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        run = run_deployment("spectrogram-flow/on-demand", timeout=0,
                             parameters={"dask": {"n_workers": 2}, "batch_size": 5})
        while len(list(out.rglob("*.spect.npz"))) < STARTED:
            assert serve.poll() is None and time.monotonic() < deadline + 120, log.read_text()
            time.sleep(0.2)
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    console = log.read_text(errors="replace")
    assert "run stopped (terminated (SIGTERM))" in console, console
    # A service asked to stop that stopped cleanly: 0, as systemd and Kubernetes expect.
    assert serve.returncode == 0, console
    from prefect import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state.is_cancelled(), (state, console)
    (report_file,) = (out / "spectroflow-reports").glob("report-*.csv")
    reported = {row["output"] for row in report_rows(report_file).values() if row["status"] == "written"}
    outputs = _assert_whole_or_absent(out)
    assert len(reported) == outputs > 0, "every whole output is in the run's report"
    assert not _session_left(serve.pid)
