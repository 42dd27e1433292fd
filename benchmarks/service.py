"""Ingestion as a service: how soon a new recording's spectrogram exists, and what runs cost.

    python benchmarks/service.py stream                  # one upload every 3 s for 4 min
    python benchmarks/service.py stream --faults         # ... while the relay, serve.py and the
                                                         # Prefect server are killed or restarted
    python benchmarks/service.py stream --manifest-rows 1000000   # ... into a dataset of a
                                                         # million recordings
    python benchmarks/service.py burst --uploads 2000 --within 60
    python benchmarks/service.py fixed-cost              # a run's seconds over the library's

Everything runs on 127.0.0.1, as a lab would run it on one machine: moto's server (S3, and SQS
with the bucket's notifications), a ``prefect server``, ``deployments/serve.py`` (source
``s3://bench/audio``, destination ``s3://bench/spect``, its defaults otherwise) and
``spectroflow relay`` (its defaults).

``stream``: the sample's 20 birdsongrec recordings, uploaded in turn under new names, one every
``--interval`` seconds; the relay reads the queue. For every upload, the seconds from the end of
its upload to its output appearing (the destination is listed every half second), and whether
the output's arrays equal those the library writes for the same recording (the library's
equal vak 1.1.0's: tests/test_spectrogram.py). With ``--faults``, at a quarter of the stream the
relay is killed (SIGKILL) and started again 5 s later, at half ``serve.py`` is stopped (SIGTERM)
and started again, and at three quarters the Prefect server is restarted. With
``--manifest-rows N``, the destination's manifest holds N recordings before the stream starts
(written recordings of ``s3://bench/audio/archive/``, synthetic rows), as in a dataset that
already has them: runs triggered by events look up the recordings they name and never list the
source, so what grows with the dataset is the manifest. Also reports the ingest runs'
durations, and the rows read back (:func:`spectroflow.manifest.read`): those in the CSV file and
those event runs left in its journal for the scheduled run to merge.

``burst``: ``--uploads`` tiny recordings within ``--within`` seconds, each notified to the relay's
HTTP route as MinIO would (moto's SQS takes about 9 messages a second, far slower than a real
queue, so it would measure moto). Reports the seconds until every output exists, the number of
ingest runs, and the peak RSS of serve.py (with the flow runs it forks, not the Dask workers) and
of the relay.

``fixed-cost``: 6 cbin recordings (gy6or6), 2 workers, into an empty local destination: the
library in a fresh process (its import included); the flow in a fresh process against the
running server (cold: imports, a new local Dask cluster); and the served flow (warm: serve.py's
cluster and forked run processes), timed from its run's Pending state to its end. Each is the
median of ``--repeat`` rounds; the flow's cost is its median difference from the library's.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = Path(os.environ.get("SPECTROFLOW_SAMPLE_DATA", ROOT.parent / "shared" / "data"))
WAVS = sorted((DATA / "birdsongrec" / "Bird0" / "Wave").glob("*.wav"))
CBIN = DATA / "gy6or6" / "032312"
BIN = Path(sys.executable).parent
BUCKET = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class Stack:
    """moto, a Prefect server, serve.py and a relay, each started (and restarted) on demand."""

    def __init__(self, root: Path, route: str = "queue"):
        self.root, self.route = root, route
        self.procs: dict[str, subprocess.Popen] = {}
        self.moto_port, self.prefect_port, self.relay_port = free_port(), free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env |= {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.moto_port}", "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": f"http://127.0.0.1:{self.prefect_port}/api",
            "PREFECT_SERVER_UI_ENABLED": "false",
        }
        os.environ.update({k: v for k, v in self.env.items() if k.startswith(("AWS_", "PREFECT_"))})
        self.queue_url = ""

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "a")
        proc = subprocess.Popen(args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start_moto(self) -> None:
        import boto3

        self._start("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.moto_port)])
        wait_until(lambda: healthy(f"http://127.0.0.1:{self.moto_port}/moto-api/"), 60, "moto")
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        s3.create_bucket(Bucket=BUCKET)
        if self.route == "queue":
            self.queue_url = sqs.create_queue(QueueName="bench-audio")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=self.queue_url,
                                           AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
                                         "Filter": {"Key": {"FilterRules": [
                                             {"Name": "prefix", "Value": "audio/"}]}}}]})

    def start_prefect(self) -> None:
        self._start("prefect", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                "--port", str(self.prefect_port)])
        wait_until(lambda: healthy(f"http://127.0.0.1:{self.prefect_port}/api/health"), 180,
                   "prefect server")

    def start_serve(self) -> None:
        self._start("serve", [sys.executable, "deployments/serve.py", "--source",
                              f"s3://{BUCKET}/audio", "--destination", f"s3://{BUCKET}/spect",
                              "--nightly-cron", "0 0 1 1 *", "--ingest-cron", "0 0 1 1 *"])
        wait_until(lambda: "deployments are being served" in self.log("serve"), 180, "serve.py")

    def start_relay(self) -> None:
        route = (["--queue-url", self.queue_url, "--wait", "1"] if self.route == "queue"
                 else ["--listen", f"127.0.0.1:{self.relay_port}"])
        self._start("relay", [str(BIN / "spectroflow"), "relay", *route])
        wait_until(lambda: "relaying" in self.log("relay") or "listening on" in self.log("relay"),
                   60, "the relay")

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def start_all(self) -> None:
        self.start_moto()
        self.start_prefect()
        self.start_serve()
        self.start_relay()

    def close(self) -> None:
        for name in ("relay", "serve", "prefect", "moto"):
            if name in self.procs:
                self.stop(name)


def ingest_runs() -> list:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("ingest-flow/ingest")
        runs, offset = [], 0
        while True:
            page = client.read_flow_runs(limit=200, offset=offset)
            runs += [r for r in page if r.deployment_id == deployment.id and not r.auto_scheduled]
            if len(page) < 200:
                return runs
            offset += 200


def reference_arrays(root: Path) -> dict[str, dict]:
    """The library's arrays for each sample recording, by its name."""
    import numpy as np

    import spectroflow

    out = root / "reference"
    summary = spectroflow.run("wav", {}, str(out), audio_files=[str(w) for w in WAVS],
                              num_workers=2)
    assert summary.ok, summary.failed
    arrays = {}
    for wav in WAVS:
        with np.load(out / f"{wav.name}.spect.npz") as npz:
            arrays[wav.name] = {k: npz[k] for k in ("s", "f", "t")}
    return arrays


def seed_manifest(fs, n_rows: int) -> int:
    """A destination manifest of ``n_rows`` written recordings (in order of ``audio_path``, as
    runs write it); returns its size in bytes."""
    import csv

    from spectroflow import manifest

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(manifest.COLUMNS)
    for i in range(n_rows):
        name = f"{i // 1000:04d}/{i:07d}.wav"
        writer.writerow([f"s3://{BUCKET}/audio/archive/{name}",
                         f"s3://{BUCKET}/spect/archive/{name}.spect.npz", "", "",
                         "2.90435", "0.00145", "ok", "", "f" * 16])
    data = text.getvalue().encode()
    fs.pipe(f"{BUCKET}/spect/{manifest.MANIFEST_NAME}", data)
    return len(data)


def stream(args: argparse.Namespace, root: Path) -> None:
    import numpy as np
    import s3fs

    reference = reference_arrays(root)
    stack = Stack(root, "queue")
    stack.start_moto()
    fs = s3fs.S3FileSystem()
    if args.manifest_rows:
        size = seed_manifest(fs, args.manifest_rows)
        print(f"  manifest of {args.manifest_rows} rows ({size / 1e6:.0f} MB) in place",
              file=sys.stderr, flush=True)
    stack.start_prefect()
    stack.start_serve()
    stack.start_relay()
    uploaded: dict[str, tuple[float, str]] = {}  # output key -> (upload end, recording name)
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            fs.invalidate_cache()
            try:
                found = fs.find(f"{BUCKET}/spect/stream")
            except FileNotFoundError:
                found = []
            now = time.time()
            for key in found:
                if key.endswith(".spect.npz"):
                    seen.setdefault(key, now)
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    n = int(args.duration / args.interval)
    faults = {n // 4: "relay", n // 2: "serve", 3 * n // 4: "prefect"} if args.faults else {}
    start = time.monotonic()
    try:
        for i in range(n):
            wav = WAVS[i % len(WAVS)]
            name = f"{i:04d}-{wav.name}"
            fs.pipe(f"{BUCKET}/audio/stream/{name}", wav.read_bytes())
            uploaded[f"{BUCKET}/spect/stream/{name}.spect.npz"] = (time.time(), wav.name)
            if i in faults:
                what = faults[i]
                print(f"  fault at upload {i}: {what}", file=sys.stderr, flush=True)
                if what == "relay":
                    stack.stop("relay", signal.SIGKILL)
                    threading.Timer(5, stack.start_relay).start()
                elif what == "serve":
                    stack.stop("serve")
                    stack.start_serve()
                else:
                    stack.stop("prefect")
                    stack.start_prefect()
            time.sleep(max(0.0, start + (i + 1) * args.interval - time.monotonic()))
        wait_until(lambda: set(uploaded) <= set(seen), 600, "every output", every=1)
        done.set()
        runs = ingest_runs()
        rows = in_csv = pending = 0
        if args.manifest_rows:
            from spectroflow import manifest

            fs.invalidate_cache()
            # No name here holds a line break: a row a line.
            in_csv = fs.cat(f"{BUCKET}/spect/{manifest.MANIFEST_NAME}").count(b"\n") - 1
            pending = len(fs.find(f"{BUCKET}/spect/{manifest.JOURNAL_DIR}"))
            rows = len(manifest.read(f"s3://{BUCKET}/spect"))
        wrong = 0
        fs.invalidate_cache()
        for key, (_, wav) in uploaded.items():
            with fs.open(key, "rb") as f, np.load(io.BytesIO(f.read())) as npz:
                wrong += not all(np.array_equal(npz[k], reference[wav][k]) for k in ("s", "f", "t"))
    finally:
        done.set()
        stack.close()
    latencies = sorted(seen[k] - t for k, (t, _) in uploaded.items())
    seconds = sorted(r.total_run_time.total_seconds() for r in runs if r.total_run_time)
    print(f"stream: {n} uploads, one every {args.interval:g} s{', with faults' if faults else ''}"
          f"{f', into a manifest of {args.manifest_rows} rows' if args.manifest_rows else ''}; "
          f"{len(runs)} ingest runs, each {statistics.median(seconds):.1f} s (median), "
          f"{seconds[-1]:.1f} s (max)")
    if args.manifest_rows:
        print(f"manifest: {rows} rows after the stream ({args.manifest_rows} + {n} expected), "
              f"{in_csv} of them in the CSV file, the others in {pending} journal files")
    print(f"upload -> output: median {statistics.median(latencies):.1f} s, "
          f"p95 {latencies[int(0.95 * (len(latencies) - 1))]:.1f} s, max {latencies[-1]:.1f} s; "
          f"{n - wrong}/{n} outputs equal to the library's")


def tiny_wav(seed: int) -> bytes:
    import numpy as np
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.random.default_rng(seed).uniform(-0.5, 0.5, 2048), 8000, format="WAV")
    return buffer.getvalue()


def notification(key: str, size: int, sequencer: str) -> bytes:
    """An S3 event notification of one created object, as MinIO POSTs it."""
    record = {"eventVersion": "2.0", "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
              "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
              "s3": {"bucket": {"name": BUCKET, "arn": f"arn:aws:s3:::{BUCKET}"},
                     "object": {"key": key, "size": size, "eTag": sequencer,
                                "sequencer": sequencer}}}
    return json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": f"{BUCKET}/{key}",
                       "Records": [record]}).encode()


def burst(args: argparse.Namespace, root: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import quote

    import httpx
    import psutil
    import s3fs

    stack = Stack(root, "http")
    stack.start_all()
    fs = s3fs.S3FileSystem()
    peaks = {"serve": 0, "relay": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for name in peaks:
                try:
                    proc = psutil.Process(stack.procs[name].pid)
                    # serve.py and the run processes it forks (the Dask workers are its
                    # children's too, but are the cluster's, not the service's, memory).
                    tree = [proc, *(c for c in proc.children(recursive=True)
                                    if "spawn_main" not in " ".join(c.cmdline()))]
                    rss = sum(p.memory_info().rss for p in tree if p.is_running())
                    peaks[name] = max(peaks[name], rss)
                except (psutil.Error, KeyError):
                    pass
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    url = f"http://127.0.0.1:{stack.relay_port}/"
    retries: list[int] = []
    client = httpx.Client(timeout=60)

    def upload(i: int) -> None:
        key = f"audio/burst/{i:05d}.wav"
        data = tiny_wav(i)
        fs.pipe(f"{BUCKET}/{key}", data)
        # As MinIO's queue does: a notification not answered 2xx is sent again.
        for _ in range(60):
            answer = client.post(url, content=notification(quote(key), len(data), f"{i:016X}"))
            if answer.status_code != 503:
                break
            retries.append(i)
            time.sleep(1)
        answer.raise_for_status()

    start = time.monotonic()
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = []
            for i in range(args.uploads):
                futures.append(pool.submit(upload, i))
                time.sleep(max(0.0, start + (i + 1) * args.within / args.uploads - time.monotonic()))
            for future in futures:
                future.result()
        uploads_s = time.monotonic() - start

        def outputs() -> int:
            fs.invalidate_cache()
            try:
                return sum(k.endswith(".spect.npz") for k in fs.find(f"{BUCKET}/spect/burst"))
            except FileNotFoundError:
                return 0

        wait_until(lambda: outputs() >= args.uploads, 1800, "every output", every=2)
        total_s = time.monotonic() - start
        runs = ingest_runs()
    finally:
        done.set()
        stack.close()
    print(f"burst: {args.uploads} uploads in {uploads_s:.1f} s; every output after {total_s:.1f} s; "
          f"{len(runs)} ingest runs; {len(retries)} notifications sent again after a 503; "
          f"peak RSS serve.py {peaks['serve'] / 2**20:.0f} MB, relay "
          f"{peaks['relay'] / 2**20:.0f} MB")


LIBRARY = """
import sys
import spectroflow
summary = spectroflow.run("cbin", {}, sys.argv[2], audio_dir=sys.argv[1], num_workers=2)
assert summary.counts == {"written": 6}, summary
"""
FLOW = """
import sys
from spectroflow.flows.spectrograms import spectrogram_flow
state = spectrogram_flow(sys.argv[1], sys.argv[2], audio_format="cbin", dask={"n_workers": 2},
                         return_state=True)
assert state.is_completed(), state.message
"""


def timed(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{args[:3]} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def served_run(destination: str) -> tuple[float, float]:
    """An on-demand run of serve.py: seconds from Pending to its end, and from its request."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    start = time.perf_counter()
    run = run_deployment("spectrogram-flow/on-demand", timeout=600, poll_interval=0.5,
                         parameters={"source": str(CBIN), "destination": destination,
                                     "audio_format": "cbin"})
    requested = time.perf_counter() - start
    assert run.state.is_completed(), run.state
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(run.id)
    pending = next(s.timestamp for s in states if s.type.value == "PENDING")
    return (states[-1].timestamp - pending).total_seconds(), requested


def fixed_cost(args: argparse.Namespace, root: Path) -> None:
    stack = Stack(root, "queue")
    stack.start_moto()  # serve.py's deployments name an S3 source; runs here pass their own
    stack.start_prefect()
    stack.start_serve()
    rounds = []
    try:
        served_run(str(root / "warm-up"))  # the forkserver's and the workers' first run
        for i in range(args.repeat):
            out = root / f"round-{i}"
            served, requested = served_run(str(out / "served"))
            rounds.append({
                "library": timed([sys.executable, "-c", LIBRARY, str(CBIN), str(out / "library")],
                                 stack.env),
                "flow, fresh process": timed([sys.executable, "-c", FLOW, str(CBIN),
                                              str(out / "flow")], stack.env),
                "flow, served (warm)": served,
                "  the same, from its request": requested,
            })
            shutil.rmtree(out)
    finally:
        stack.close()
    print(f"6 cbin recordings ({CBIN}), 2 workers, {args.repeat} rounds, {os.cpu_count()} cores")
    print(f"{'path':<32}{'median s':>10}{'- library s':>14}")
    for name in rounds[0]:
        median = statistics.median(r[name] for r in rounds)
        over = statistics.median(r[name] - r["library"] for r in rounds)
        print(f"{name:<32}{median:>10.2f}{over:>14.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("stream")
    s.add_argument("--interval", type=float, default=3.0)
    s.add_argument("--duration", type=float, default=240.0)
    s.add_argument("--faults", action="store_true")
    s.add_argument("--manifest-rows", type=int, default=0, metavar="N",
                   help="the destination's manifest holds N recordings before the stream")
    b = sub.add_parser("burst")
    b.add_argument("--uploads", type=int, default=2000)
    b.add_argument("--within", type=float, default=60.0)
    f = sub.add_parser("fixed-cost")
    f.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="spectroflow-service-"))
    try:
        {"stream": stream, "burst": burst, "fixed-cost": fixed_cost}[args.what](args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
