"""Throughput and memory of spectroflow against a reference implementation of vak 1.1.0's work.

    python benchmarks/run.py                      # 1 350 files, local disk, 2 workers, 3 rounds
    python benchmarks/run.py --sizes 1350 13500 --methods library flow --discard-outputs
                                                  # memory flatness (13 500 outputs are 110 GB)
    python benchmarks/run.py --s3 135             # also 135 files from / to moto's S3 server

Workloads are the 20 birdsongrec recordings of the sample data, repeated (hard links). Every
method runs on the same files with the same number of worker processes, each in a fresh
subprocess (so peak RSS is its own). Methods run in turn within a round, for ``--repeat`` rounds;
the table gives each method's median, and the ratios below it are medians of the ratios within
each round. At 1 350 files every method writes 11 GB, and copying it into the page cache is
half of the workers' CPU time; how fast that copy runs depends on the memory it lands in, so
each run starts ``--settle`` seconds after the previous run's outputs were deleted (on a VM
that hands freed memory back to its host, a run started at once writes into pages that are
still mapped and ran up to 1.3x faster, favouring whichever method starts writing soonest).

- vak: vak 1.1.0 itself (``make_spectrogram_files_from_audio_files``, its dask bag on the
  multiprocessing scheduler), run by ``--vak-python``: a Python 3.12 environment with
  ``pip install vak==1.1.0`` (it needs PyTorch). vak writes every output into one folder named
  after its recording, so it gets the workload as uniquely named hard links.
- reference: vak's algorithm as vak runs it (soundfile float64 audio, matplotlib.mlab.specgram,
  np.savez) over a dask bag of files with the multiprocessing scheduler. Checked against
  vak-reference before timing.
- floor: read + real-input FFT of the Hanning-windowed frames + |X|^2 + np.savez of the arrays;
  the least work any faithful implementation must do.
- disk: the time to write the workload's bytes to the same disk: for every recording, a file of
  its output's size (vak's arrays and the npz container) written by the same number of
  processes, through the page cache, one write call a MiB, with no computing at all (writes past
  the page cache may take less).
- library: spectroflow.run (the pure library: a process pool, a few batches in flight), each
  output written through the page cache or past it (O_DIRECT) as measured
  (``spectroflow.storage.local.WriteTimes``).
- library-page, library-direct: the same with ``SPECTROFLOW_DIRECT_WRITES=0`` (every output
  through the page cache) or ``=1`` (every output past it, where the file system takes it).
- flow: the Prefect flow on a LocalCluster, against an already-running Prefect API (server
  start-up is paid once per process or deployment, not per run, and is reported separately).
- flow-slurm: the same flow with its workers as SLURM jobs (dask_jobqueue.SLURMCluster, one
  single-threaded worker a job); needs SLURM's clients configured (SLURM_CONF) and, for a real
  cluster, --slurm-kwargs (queue, python, job_script_prologue, ...).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SPECTROFLOW_SAMPLE_DATA", HERE.parents[1] / "shared" / "data"))
SAMPLE_WAVS = sorted((DATA / "birdsongrec" / "Bird0" / "Wave").glob("*.wav"))
#: Size of one output (float64 spectrogram of one sample recording, on average), for disk checks.
OUTPUT_MB = 8.5


# ---- per-file work of the baselines (module level so worker processes can import them) ----

def reference_one(pair):
    import numpy as np
    import soundfile
    from matplotlib.mlab import specgram

    audio, out = pair
    dat, fs = soundfile.read(audio)
    s, f, t = specgram(dat, 512, fs, noverlap=512 - 64)[:3]
    np.savez(out, s=s, f=f, t=t, audio_path=str(audio))
    return out


def floor_one(pair):
    import numpy as np
    import scipy.fft
    import soundfile
    from numpy.lib.stride_tricks import sliding_window_view

    audio, out = pair
    with open(audio, "rb") as fh:
        data, _ = soundfile.read(io.BytesIO(fh.read()))
    spec = scipy.fft.rfft(sliding_window_view(data, 512)[::64] * np.hanning(512), axis=1)
    power = (spec.real**2 + spec.imag**2).T
    np.savez(out, s=power, f=np.arange(257.0), t=np.arange(power.shape[1], dtype=float), audio_path=str(audio))
    return out


#: What ``disk_one`` writes, a MiB at a time (not zeros: nothing below may skip or compress it).
_PATTERN = bytes(range(256)) * 4096


def disk_one(pair):
    """Write a file of the size the recording's output has: vak's four arrays in an npz."""
    import soundfile

    audio, out = pair
    frames = soundfile.info(audio).frames
    n_t = (frames - 512) // 64 + 1  # matplotlib.mlab.specgram's columns: fft_size 512, step 64
    # s (257 x n_t), f (257), t (n_t) float64, audio_path (unicode); each member with its zip
    # and npy headers (about 200 bytes).
    left = 8 * (257 * n_t + 257 + n_t) + 4 * len(audio) + 4 * 200
    with open(out, "wb", buffering=0) as fh:
        while left > 0:
            left -= fh.write(memoryview(_PATTERN)[: min(left, len(_PATTERN))])
    return out


def _bag(func, files, out_dir, workers):
    import dask.bag

    pairs = [(str(f), str(out_dir / f"{i:06d}.spect.npz")) for i, f in enumerate(files)]
    return dask.bag.from_sequence(pairs).map(func).compute(scheduler="processes", num_workers=workers)


# ---- one measurement, in its own process ----

def slurm_kwargs() -> dict:
    """SLURMCluster's arguments for the ``flow-slurm`` method: one single-threaded worker a job,
    in this Python, updated with the JSON of ``SPECTROFLOW_SLURM_KWARGS`` (``--slurm-kwargs``)."""
    return {"queue": "debug", "cores": 1, "processes": 1, "memory": "2GB", "python": sys.executable,
            "scheduler_options": {"host": "127.0.0.1"},
            **json.loads(os.environ.get("SPECTROFLOW_SLURM_KWARGS", "{}"))}


#: The library's methods: spectroflow.run with vak's parameters, outputs stored as named.
LIBRARY_OUTPUTS = {
    "library": None,
    "library-page": None,
    "library-direct": None,
    "library-float32": {"output_dtype": "float32"},
    "library-compressed": {"output_format": "npz-compressed"},
    "library-compressed-float32": {"output_format": "npz-compressed", "output_dtype": "float32"},
    "library-zarr": {"output_format": "zarr"},
    "library-zarr-float32": {"output_format": "zarr", "output_dtype": "float32"},
}


def measure(method: str, src: str, dest: str, workers: int) -> dict:
    # The main process's modules are imported before the clock starts, for every method (the
    # flow's are too); what worker processes import is part of each run.
    if method.startswith("library"):
        import spectroflow

        if method in ("library-page", "library-direct"):
            os.environ[spectroflow.storage.DIRECT_WRITES] = "1" if method == "library-direct" else "0"
    elif method in ("reference", "floor", "disk", "vak"):
        import dask.bag

        # Listed before the clock, by the methods that need it (a list of 100 000 paths would
        # count in the flow process's memory).
        files = sorted(p for p in Path(src).rglob("*.wav"))
    if method == "vak":
        from vak.prep.spectrogram_dataset.audio_helper import (
            make_spectrogram_files_from_audio_files,
        )

        # vak names each output after its recording alone, in one folder: the workload's
        # repeated names get their own (hard links), or outputs would overwrite one another.
        flat = Path(dest).parent / f"{Path(dest).name}-audio"
        flat.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(files):
            os.link(f, flat / f"{i:06d}-{f.name}")
        files = sorted(flat.iterdir())
    start = time.perf_counter()
    extra = {}
    if method in ("reference", "floor", "disk"):
        Path(dest).mkdir(parents=True, exist_ok=True)
        one = {"reference": reference_one, "floor": floor_one, "disk": disk_one}[method]
        _bag(one, files, Path(dest), workers)
    elif method == "vak":  # vak 1.1.0 itself, in its own Python (--vak-python)
        Path(dest).mkdir(parents=True, exist_ok=True)
        written = make_spectrogram_files_from_audio_files(
            audio_format="wav", spect_params={"fft_size": 512, "step_size": 64},
            output_dir=dest, audio_files=[str(f) for f in files])
        assert len(written) == len(files), len(written)
    elif method.startswith("library"):
        summary = spectroflow.run("wav", LIBRARY_OUTPUTS[method], dest, audio_dir=src,
                                  num_workers=workers, skip_done=False)
        assert summary.ok, summary.failed[:3]
        if "://" not in dest:
            npz = [p.stat().st_size for p in Path(dest).rglob("*.spect.npz")]
            groups = list(Path(dest).rglob("*.spect.zarr"))  # a zarr output is a folder
            sizes = npz + [sum(f.stat().st_size for f in g.rglob("*") if f.is_file()) for g in groups]
            extra["output_mb_per_file"] = sum(sizes) / max(len(sizes), 1) / 2**20
    elif method in ("flow", "flow-slurm"):
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
        from prefect.server.api.server import SubprocessASGIServer
        from prefect.settings import PREFECT_API_URL, temporary_settings

        t0 = time.perf_counter()
        server = SubprocessASGIServer()
        server.start(timeout=120)
        extra["api_startup_s"] = round(time.perf_counter() - t0, 2)
        os.environ["PREFECT_API_URL"] = server.api_url
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            from spectroflow.flows.spectrograms import spectrogram_flow
            from spectroflow.params import DaskSettings

            dask = DaskSettings(n_workers=workers)
            if method == "flow-slurm":  # workers are SLURM jobs (see --slurm-kwargs)
                dask = DaskSettings(cluster_class="dask_jobqueue.SLURMCluster", n_workers=workers,
                                    cluster_kwargs=slurm_kwargs())
            start = time.perf_counter()
            state = spectrogram_flow(source=src, destination=dest, audio_format="wav",
                                     dask=dask, skip_done=False, return_state=True)
            assert state.is_completed(), state.message
            wall = time.perf_counter() - start
            # Deliver queued logs and events before the server goes away.
            APILogWorker.drain_all(timeout=60)
            EventsWorker.drain_all(timeout=60)
        server.stop()
    if not method.startswith("flow"):
        wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_child_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        **extra,
    }


def check_reference_reproduces_vak(tmp: Path) -> float:
    """Largest relative error of the reference implementation over vak's whole files."""
    import numpy as np

    worst = 0.0
    for name in ("3.wav", "7.wav", "10.wav"):
        out = tmp / f"{name}.npz"
        reference_one((str(DATA / "birdsongrec/Bird0/Wave" / name), str(out)))
        got = np.load(out)
        ref = np.load(DATA / "vak-reference/default/birdsongrec/Bird0" / f"{name}.spect.npz")
        for key in ("s", "f", "t"):
            denom = np.maximum(np.abs(ref[key]), np.finfo(float).tiny)
            worst = max(worst, float(np.max(np.abs(got[key] - ref[key]) / denom)))
    if worst > 1e-9:
        raise SystemExit(f"the reference implementation does not reproduce vak (rel. error {worst:g})")
    return worst


def make_workload(root: Path, n_files: int) -> tuple[Path, float]:
    """``n_files`` recordings (the sample wavs, repeated, hard-linked) and their total duration."""
    import soundfile

    durations = {p: soundfile.info(str(p)).duration for p in SAMPLE_WAVS}
    src = root / f"audio-{n_files}"
    # Hard links need the originals on root's file system: copied there once.
    originals = root / "sample"
    originals.mkdir(exist_ok=True)
    for wav in SAMPLE_WAVS:
        if not (originals / wav.name).exists():
            shutil.copyfile(wav, originals / wav.name)
    total = 0.0
    for i in range(n_files):
        wav = SAMPLE_WAVS[i % len(SAMPLE_WAVS)]
        dest = src / f"rep{i // len(SAMPLE_WAVS):04d}" / wav.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            os.link(originals / wav.name, dest)
        total += durations[wav]
    return src, total


def upload(src: Path, bucket_url: str) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(bucket_url)
    fs.put(str(src), path, recursive=True)


def plan_many(n_objects: int, workers: int) -> dict:
    """Plan a dry run over ``n_objects`` objects of a synthetic S3 listing, in a fresh process
    (see ``benchmarks/scale.py plan``): seconds, tasks, peak RSS."""
    done = subprocess.run([sys.executable, str(HERE / "scale.py"), "plan-once", str(n_objects), str(workers)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


class Discarder(threading.Thread):
    """Deletes the ``.spect.npz`` files under a folder as they appear (outputs are renamed into
    place whole, so a file seen is finished), for workloads whose outputs exceed the free disk."""

    def __init__(self, folder: str):
        super().__init__(daemon=True)
        self.folder, self.stopped = folder, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            for root, _, names in os.walk(self.folder):
                for name in names:
                    if name.endswith(".spect.npz") and not name.startswith("."):
                        try:
                            os.remove(os.path.join(root, name))
                        except FileNotFoundError:
                            pass


def run_one(method: str, src: str, dest: str, workers: int, discard: bool = False,
            settle: float = 0.0) -> dict:
    # Each run writes gigabytes; start each with no dirty pages left by the one before, and with
    # the memory freed by deleting the previous run's outputs settled (see --settle).
    os.sync()
    time.sleep(settle)
    python = os.environ.get("SPECTROFLOW_VAK_PYTHON", "") if method == "vak" else sys.executable
    if not python:
        raise SystemExit("the vak method needs --vak-python: a Python where vak 1.1.0 is installed")
    cmd = [python, __file__, "--one", method, src, dest, str(workers)]
    discarder = Discarder(dest) if discard and "://" not in dest else None
    if discarder:
        discarder.start()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    finally:
        if discarder:
            discarder.stopped.set()
            discarder.join()
    if done.returncode:
        raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_disk(root: Path, n_files: int, discard: bool) -> None:
    need_gb = n_files * OUTPUT_MB / 1024
    free_gb = shutil.disk_usage(root).free / 2**30
    if not discard and need_gb > 0.9 * free_gb:
        raise SystemExit(f"{n_files} outputs need about {need_gb:.0f} GB and {root} has {free_gb:.0f} GB "
                         "free: add --discard-outputs (outputs are deleted as they are written)")


def _median_ratio(rounds: list[dict], num: str, den: str) -> tuple[float, list[float]] | None:
    pairs = [r[num]["wall_s"] / r[den]["wall_s"] for r in rounds if num in r and den in r]
    return (statistics.median(pairs), pairs) if pairs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1350])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["reference", "floor", "library", "flow"],
                        help="vak (vak 1.1.0 itself: see --vak-python), reference, floor, "
                        "disk (the same bytes written, no computing), library, library-page, "
                        "library-direct (SPECTROFLOW_DIRECT_WRITES=0 or 1), flow, flow-slurm (workers as SLURM "
                        "jobs: SLURM_CONF and --slurm-kwargs as the cluster needs); "
                        "library-float32, library-compressed, library-compressed-float32, "
                        "library-zarr, library-zarr-float32 (outputs stored so)")
    parser.add_argument("--vak-python", default=None, metavar="PATH",
                        help="a Python where vak 1.1.0 is installed (e.g. a Python 3.12 venv "
                        "with 'pip install vak==1.1.0'), for the vak method")
    parser.add_argument("--slurm-kwargs", default=None, metavar="JSON",
                        help="SLURMCluster arguments for flow-slurm, e.g. '{\"queue\": \"normal\"}'")
    parser.add_argument("--repeat", type=int, default=3, metavar="N", help="rounds of every method (default 3)")
    parser.add_argument("--discard-outputs", action="store_true",
                        help="delete local outputs as they are written, for workloads larger than the free disk "
                        "(the deletions then share the disk with the runs)")
    parser.add_argument("--s3", type=int, default=0, metavar="N",
                        help="also run N files read from / written to moto's S3 server on 127.0.0.1 "
                        "(moto keeps objects in memory: about 9 MB per output)")
    parser.add_argument("--settle", type=float, default=20.0, metavar="S",
                        help="seconds to wait before each run (default 20). On virtual machines "
                        "whose balloon device reports free pages to the host, memory freed by "
                        "deleting a run's outputs stays cheap to write into for a few seconds, then "
                        "costs a host fault per page: a run started at once wrote up to 1.3x faster "
                        "than one started later, which favoured whichever method starts writing "
                        "soonest")
    parser.add_argument("--plan", type=int, default=100_000, metavar="N",
                        help="also time planning N objects of a synthetic S3 listing (0: skip)")
    parser.add_argument("--root", default=None, metavar="DIR",
                        help="folder for the workload and the outputs (default: the system's temp "
                        "folder); a tmpfs such as /dev/shm takes the disk out of the measurement")
    parser.add_argument("--one", nargs=4, metavar=("METHOD", "SRC", "DEST", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        method, src, dest, workers = args.one
        print(json.dumps(measure(method, src, dest, int(workers))))
        return

    if args.slurm_kwargs:
        os.environ["SPECTROFLOW_SLURM_KWARGS"] = args.slurm_kwargs
    if args.vak_python:
        os.environ["SPECTROFLOW_VAK_PYTHON"] = args.vak_python
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    root = Path(tempfile.mkdtemp(prefix="spectroflow-bench-", dir=args.root))
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{args.workers} workers, {args.repeat} rounds, {args.settle:g} s settle before each run")
    print(f"reference vs vak-reference: max relative error {check_reference_reproduces_vak(root):.2e}")
    rows, notes, flow_rss = [], [], {}
    try:
        workloads = [("local", n) for n in args.sizes] + ([("s3", args.s3)] if args.s3 else [])
        for where, n in workloads:
            if where == "local":
                check_disk(root, n, args.discard_outputs)
            src, audio_s = make_workload(root, n)
            if where == "local":
                source, dest_for = str(src), (lambda m, n=n: str(root / f"out-{m}-{n}"))
            else:
                source, dest_for = start_s3(src, n)
            methods = [m for m in args.methods if where == "local" or m not in ("reference", "floor", "disk", "vak")]
            rounds = []
            for i in range(args.repeat):
                measured = {}
                for method in methods:
                    measured[method] = run_one(method, source, dest_for(method), args.workers,
                                               args.discard_outputs, args.settle)
                    shutil.rmtree(root / f"out-{method}-{n}", ignore_errors=True)
                    shutil.rmtree(root / f"out-{method}-{n}-audio", ignore_errors=True)
                    print(f"  {where} {n} round {i + 1}: {method} {measured[method]['wall_s']:.1f} s",
                          file=sys.stderr, flush=True)
                rounds.append(measured)
            walls = {m: [r[m]["wall_s"] for r in rounds] for m in methods}
            ref = statistics.median(walls["reference"]) if "reference" in walls else None
            for method in methods:
                wall = statistics.median(walls[method])
                rows.append((f"{where} {n}", method, n / wall, audio_s / wall, ref / wall if ref else None,
                             wall, min(walls[method]), max(walls[method]),
                             max(r[method]["rss_self_mb"] for r in rounds),
                             max(r[method]["rss_child_mb"] for r in rounds),
                             statistics.median(r[method].get("api_startup_s", 0) for r in rounds)
                             if method.startswith("flow") else None))
            for method in methods:
                per_file = [r[method]["output_mb_per_file"] for r in rounds
                            if "output_mb_per_file" in r[method]]
                if per_file and not args.discard_outputs:
                    notes.append(f"{where} {n}: {method} wrote {statistics.median(per_file):.2f} MB a "
                                 f"file, {n / statistics.median(walls[method]):.1f} files/s")
            if "flow" in walls and where == "local":
                flow_rss[n] = max(r["flow"]["rss_self_mb"] for r in rounds)
            for num, den in (("flow", "library"), ("library", "floor"), ("library", "disk"),
                             ("library-page", "disk"), ("library-direct", "disk"),
                             ("library", "reference"), ("library", "vak"), ("reference", "vak"),
                             ("flow-slurm", "flow")):
                ratio = _median_ratio(rounds, num, den)
                if ratio:
                    notes.append(f"{where} {n}: {num} / {den} wall time {ratio[0]:.2f} "
                                 f"(rounds: {', '.join(f'{x:.2f}' for x in ratio[1])})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        stop_s3()
    if args.plan:
        planned = plan_many(args.plan, args.workers)
        notes.append(f"planning {planned['objects']} objects (synthetic S3 listing): {planned['seconds']} s, "
                     f"{planned['tasks']} tasks, peak RSS {planned['peak_rss_mb']} MB")
    if len(flow_rss) > 1:
        sizes = sorted(flow_rss)
        growth = flow_rss[sizes[-1]] / flow_rss[sizes[0]] - 1
        notes.append("flow process peak RSS: " + ", ".join(f"{n} files {flow_rss[n]:.0f} MB" for n in sizes)
                     + f" ({growth:+.1%})")
    header = ("workload", "method", "files/s", "audio s/s", "x reference", "wall s (median)",
              "wall s (range)", "peak RSS main MB", "peak RSS worker MB", "API start s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row[0], row[1], f"{row[2]:.1f}", f"{row[3]:.0f}",
                 "" if row[4] is None else f"{row[4]:.2f}", f"{row[5]:.1f}", f"{row[6]:.1f}-{row[7]:.1f}",
                 f"{row[8]:.0f}", f"{row[9]:.0f}", "" if row[10] is None else f"{row[10]:.1f}"]
        print("| " + " | ".join(cells) + " |")
    print()
    for note in notes:
        print(note)


_S3 = {}


def start_s3(src: Path, n: int):
    """moto's server on 127.0.0.1 (a separate process), the workload uploaded to a bucket."""
    import socket

    if "proc" not in _S3:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        _S3["proc"] = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        import fsspec

        fs = fsspec.filesystem("s3")
        deadline = time.monotonic() + 60
        while True:
            try:
                fs.mkdir("bench")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    upload(src, f"s3://bench/audio-{n}")
    return f"s3://bench/audio-{n}", lambda m: f"s3://bench/out-{m}-{n}"


def stop_s3() -> None:
    if "proc" in _S3:
        _S3.pop("proc").terminate()


if __name__ == "__main__":
    main()
