"""Shared fixtures: the sample data, vak's reference outputs, and a real S3 API on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# No internet here: no instance metadata lookups, no telemetry. Set before boto or Prefect load.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import numpy as np
import pytest

DATA = Path(os.environ.get("SPECTROFLOW_SAMPLE_DATA", Path(__file__).parents[2] / "shared" / "data"))
#: The sample recordings of birdsongrec's Bird0, by name (0.wav, 1.wav, 10.wav, ...).
WAVS = sorted((DATA / "birdsongrec/Bird0/Wave").glob("*.wav"))
REFERENCE = DATA / "vak-reference"

#: vak's parameters for each reference folder (see its README).
REFERENCE_PARAMS = {
    "default": {},
    "tweety": {
        "freq_cutoffs": [500, 10000],
        "thresh": 6.25,
        "transform_type": "log_spect",
    },
}
WHOLE_FILES = [
    "birdsongrec/Bird0/3.wav",
    "birdsongrec/Bird0/7.wav",
    "birdsongrec/Bird0/10.wav",
    "gy6or6/032312/gy6or6_baseline_230312_0809.141.cbin",
    "gy6or6/032312/gy6or6_baseline_230312_0811.159.cbin",
]


def sample_path(subset_name: str) -> Path:
    """Where the recording behind a reference key lives (birdsongrec keeps wavs under Wave/)."""
    subset, name = subset_name.rsplit("/", 1)
    if subset.startswith("birdsongrec"):
        return DATA / subset / "Wave" / name
    return DATA / subset / name


def assert_arrays_match(got: dict, ref, rtol: float = 1e-9) -> None:
    """Every array of vak's output within ``rtol`` (float64, same shapes and keys)."""
    assert sorted(got) == sorted(ref.keys())
    for key in ("s", "f", "t"):
        assert got[key].dtype == np.float64
        assert got[key].shape == ref[key].shape, key
        np.testing.assert_allclose(got[key], ref[key], rtol=rtol, atol=0, err_msg=key)
    assert got["audio_path"].shape == () and got["audio_path"].dtype.kind == "U"


def assert_matches_fingerprint(arrays: dict, fp: dict, rtol: float = 1e-9) -> None:
    """The fingerprint of a vak output: shapes, f and t in full, stats and 512 samples of s."""
    s = arrays["s"]
    assert sorted(arrays) == fp["keys"]
    assert {k: list(v.shape) for k, v in arrays.items()} == fp["shapes"]
    assert str(s.dtype) == fp["dtypes"]["s"]
    np.testing.assert_allclose(arrays["f"], fp["f"], rtol=rtol, atol=0)
    np.testing.assert_allclose(arrays["t"], fp["t"], rtol=rtol, atol=0)
    rows, cols, values = zip(*fp["samples"], strict=True)
    np.testing.assert_allclose(s[list(rows), list(cols)], values, rtol=rtol, atol=0)
    np.testing.assert_allclose(
        [s.sum(), s.min(), s.max()], [fp["s_sum"], fp["s_min"], fp["s_max"]], rtol=rtol, atol=1e-300
    )
    assert int((~np.isfinite(s)).sum()) == fp["s_nonfinite"]


def load_npz(url: str | Path, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file at ``url`` (a path, or a URL with its storage options)."""
    import io

    from spectroflow import storage

    with np.load(io.BytesIO(storage.read_bytes(str(url), storage_options)), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def report_rows(url: str | Path, storage_options: dict | None = None) -> dict[str, dict[str, str]]:
    """The rows of the run report at ``url``, by source. The report holds a name that is not
    UTF-8 as its own bytes, which read back to the name as Python has it from the file system."""
    import csv
    import io

    from spectroflow import storage

    text = storage.read_bytes(str(url), storage_options).decode("utf-8", "surrogateescape")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    by_source = {row["source"]: row for row in rows}
    assert len(by_source) == len(rows), "one row per source"
    return by_source


@pytest.fixture(scope="session")
def fingerprints() -> dict:
    return json.loads((REFERENCE / "fingerprints.json").read_text())


def some_wavs(folder: Path, n: int = 3) -> Path:
    """``folder`` with copies of the first ``n`` of :data:`WAVS` in it."""
    folder.mkdir(parents=True, exist_ok=True)
    for wav in WAVS[:n]:
        shutil.copy(wav, folder / wav.name)
    return folder


@pytest.fixture
def console_level_restored():
    """``spectroflow run`` keeps INFO lines off the terminal through the environment (so its
    worker processes inherit it); undone after the test, for the tests that read the console."""
    name = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"
    before = os.environ.get(name)
    yield
    if before is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = before


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    """A writable copy of the sample recordings and annotations (not the reference outputs)."""
    dest = tmp_path / "data"
    for subset in ("birdsongrec", "gy6or6"):
        shutil.copytree(DATA / subset, dest / subset)
    return dest


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1, reachable by every process through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    if previous is None:
        os.environ.pop("AWS_ENDPOINT_URL", None)
    else:
        os.environ["AWS_ENDPOINT_URL"] = previous
    server.stop()


@pytest.fixture
def s3(s3_endpoint):
    """An s3fs filesystem on the moto server, with a fresh bucket; yields (fs, bucket)."""
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    yield fs, bucket
    fs.invalidate_cache()


def upload_samples(fs, bucket: str, prefix: str = "audio") -> None:
    """The sample recordings and annotations under s3://bucket/prefix/{birdsongrec,gy6or6}/."""
    for subset in ("birdsongrec", "gy6or6"):
        for path in (DATA / subset).rglob("*"):
            if path.is_file():
                rel = path.relative_to(DATA).as_posix()
                fs.pipe(f"{bucket}/{prefix}/{rel}", path.read_bytes())
    fs.invalidate_cache()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, what: str):
    """``check()``'s first true value, asked every 0.5 s for at most ``timeout`` seconds."""
    # A poll, for state that signals nothing here: a server's port, a page, a server's services.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


class OutputLines:
    """The lines a child process writes to ``stream``, read by a thread: a test waits for the
    line it needs instead of polling, and the child never blocks on a full pipe."""

    def __init__(self, stream):
        self._lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        with stream:
            for line in stream:
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, match, timeout: float) -> str | None:
        """The first line for which ``match(line)`` is true; None if the stream ends or
        ``timeout`` seconds pass without one."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if match(line):
                        return line
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    return None
                self._changed.wait(left)

    def text(self) -> str:
        """Everything read so far."""
        with self._changed:
            return "".join(self._lines)


@contextmanager
def prefect_server(folder: Path, **settings: str) -> Iterator[tuple[str, dict]]:
    """``prefect server start`` on a free port of 127.0.0.1, its home and log in ``folder``, with
    ``settings`` (Prefect's environment variables) added; yields its base URL and the env it
    runs with. This process talks to it within the block."""
    import subprocess
    import sys
    import urllib.request

    from prefect.settings import PREFECT_API_URL, temporary_settings

    base = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "PREFECT_HOME": str(folder / "prefect-home"),
           "PREFECT_API_URL": f"{base}/api", "PREFECT_UI_API_URL": f"{base}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **settings}
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
         base.rsplit(":", 1)[1]], env=env, stdout=log, stderr=subprocess.STDOUT)

    def healthy():
        try:
            with urllib.request.urlopen(f"{base}/api/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return proc.poll() is not None and pytest.fail("prefect server exited")

    try:
        wait_for(healthy, 120, "prefect server")
        with temporary_settings({PREFECT_API_URL: f"{base}/api"}):
            yield base, env
    finally:
        _forget_concurrency_services()
        proc.terminate()
        proc.wait(30)
        log.close()


def _forget_concurrency_services() -> None:
    """Deliver this process's queued logs and events to the server while it is up, and stop
    Prefect's services that hold on to its API: they keep talking to the API of the first run
    that used them, so a run against a later server could acquire no concurrency slot, and at
    exit the process would wait for a server that is gone."""
    from prefect.concurrency.services import (
        ConcurrencySlotAcquisitionService,
        ConcurrencySlotAcquisitionWithLeaseService,
    )
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)
    kinds = (ConcurrencySlotAcquisitionService, ConcurrencySlotAcquisitionWithLeaseService)
    for service in [s for s in list(kinds[0]._instances.values()) if isinstance(s, kinds)]:
        service._drain().result(timeout=30)
        service._remove_instance()


@contextmanager
def moto_server_checking_credentials(unchecked: int) -> Iterator[str]:
    """A moto server process on 127.0.0.1 with IAM auth on; yields its URL.

    Its first ``unchecked`` requests go unchecked, to create the users, keys and policies the
    test needs; every later one needs valid credentials.
    """
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(unchecked)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        # Its server (werkzeug) says so once the port listens.
        output = OutputLines(proc.stderr)
        assert output.wait_for(lambda line: f" * Running on {url}" in line, 60), \
            f"moto_server did not start:\n{output.text()}"
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API (Prefect's own test harness) for the whole session. It streams logs
    out, so that a test can wait for a run's last ones (test_flow.flow_logs)."""
    from prefect.settings import (
        PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED,
        PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    streaming = {PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED: True,
                 PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED: True}
    with temporary_settings(streaming), prefect_test_harness(server_startup_timeout=120):
        yield


def fresh_python(code: str) -> str:
    """What ``code`` prints in a new interpreter (this one has imported more than it would)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def set_up_workers(client) -> None:
    """Give a test's own cluster spectroflow's worker setup now, as a run would (restarting its
    workers): a run on it then restarts nothing, so the test's hold on its workers (a process
    to kill, a function patched in) stays valid."""
    from prefect.settings import PREFECT_API_URL

    from spectroflow.orchestration.workers import WorkerSetup

    client.register_plugin(WorkerSetup.for_api(PREFECT_API_URL.value()))
