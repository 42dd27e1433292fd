"""Memory and time of one long recording, locally and to moto's S3 server.

    python benchmarks/long.py                          # 60 minutes at 44.1 kHz, local and S3
    python benchmarks/long.py --minutes 10 --code HEAD~3   # also the code of another revision
    python benchmarks/long.py --via flow --to local    # the flow, one worker

The recording is mono int16 noise, written once to a temporary folder. Each run is a fresh
Python process calling ``spectroflow.make_spectrogram_files(audio_format="wav", spect_params={},
output_dir=..., audio_files=[...])`` with vak's default parameters; this script samples the RSS
of that process and of every process it started, every 20 ms, and reports the peak of their sum
(the whole tree, worker processes included; the S3 server is not part of it). ``--via flow``
runs the spectrogram flow instead (as ``spectroflow run SOURCE DEST --workers 1`` does): on a
LocalCluster of one worker, with Prefect's temporary API, the Dask scheduler and its workers all
in the tree. ``--code REV``
runs the same from a ``git worktree`` of another revision, to compare with the code before a
change. ``--s3-endpoint URL`` writes to an S3-compatible server already running there
(credentials from the usual AWS environment variables) instead of moto's, which holds objects in
memory and assembles a multipart upload in memory too: a 60-minute output (4.9 GB) needs a
server that stores to disk, such as MinIO or ``npx s3rver``.

Outputs are checked without loading them: the first and last columns of the local output equal
those of ``matplotlib.mlab.specgram`` of the matching stretch of audio (vak's computation), and
the S3 output's ``s.npy`` member has the local one's size and CRC-32 (from the zip directory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import start_s3, stop_s3  # noqa: E402 - the sibling benchmark's moto server

_RUN = """
import json, os, sys
import spectroflow
paths = spectroflow.make_spectrogram_files(audio_format="wav", spect_params={},
                                           output_dir=sys.argv[2], audio_files=[sys.argv[1]],
                                           storage_options=json.loads(os.environ.get(
                                               "SPECTROFLOW_BENCH_STORAGE", "null")))
assert len(paths) == 1, paths
print(spectroflow.__file__)
print(paths[0])
"""
_FLOW = """
import json, os, sys
from spectroflow.flows.spectrograms import spectrogram_flow
from spectroflow.orchestration.ephemeral import temporary_api
from spectroflow.params import DaskSettings
with temporary_api():
    result = spectrogram_flow(source=sys.argv[1], destination=sys.argv[2], audio_format="wav",
                              dask=DaskSettings(n_workers=1), storage_options=json.loads(
                                  os.environ.get("SPECTROFLOW_BENCH_STORAGE", "{}")))
assert result["counts"] == {"written": 1}, result
"""


def make_recording(path: Path, minutes: float, rate: int) -> None:
    """Mono int16 noise, written a minute at a time."""
    import soundfile

    rng = np.random.default_rng(0)
    with soundfile.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as sf:
        left = int(minutes * 60 * rate)
        while left:
            n = min(left, 60 * rate)
            sf.write(rng.integers(-3000, 3000, n, dtype=np.int16))
            left -= n


def measure(source: str, destination: str, pythonpath: str | None, via: str) -> dict:
    """Run one process; its wall time and the peak RSS of its process tree."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    if via == "flow":
        command = [sys.executable, "-c", _FLOW, source, destination]
    else:
        command = [sys.executable, "-c", _RUN, source, destination]
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peak = [0]

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                total = 0
                for p in tree:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                peak[0] = max(peak[0], total)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"the run failed ({proc.returncode}):\n{err[-3000:]}")
    if via == "flow":  # the only output: the recording's name under the destination
        output = destination.rstrip("/") + "/" + Path(source).name + ".spect.npz"
    else:
        module, output = out.strip().splitlines()[-2:]
        if pythonpath and not module.startswith(pythonpath):
            raise SystemExit(f"{module} was imported, not the code under {pythonpath}")
    return {"seconds": seconds, "peak_mb": peak[0] / 2**20, "output": output}


def on_server(endpoint: str, audio_dir: Path):
    """The recording uploaded to ``s3://bench/audio`` on the S3 server at ``endpoint``."""
    import fsspec

    os.environ["AWS_ENDPOINT_URL"] = endpoint
    # A server that assembles a multipart upload by copying it (s3rver: about a minute for 5 GB)
    # answers its completion after botocore's 60 s read timeout.
    os.environ["SPECTROFLOW_BENCH_STORAGE"] = json.dumps({"config_kwargs": {"read_timeout": 900}})
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    if not fs.exists("bench"):
        fs.mkdir("bench")
    run = f"run-{time.strftime('%Y%m%dT%H%M%S')}"  # what earlier runs left is not this one's
    for path in audio_dir.iterdir():
        fs.put_file(str(path), f"bench/{run}/audio/{path.name}")
    return f"s3://bench/{run}/audio", lambda m: f"s3://bench/{run}/out-{m}"


def check_local(output: str, audio: Path, columns: int = 500) -> None:
    """The first and last ``columns`` of the output equal mlab.specgram's of that audio."""
    import soundfile
    from matplotlib.mlab import specgram

    from spectroflow.outputs import open_array

    s = open_array(output)
    info = soundfile.info(str(audio))
    n_frames = (info.frames - 512) // 64 + 1
    assert s.shape == (257, n_frames), s.shape
    for first in (0, n_frames - columns):
        start = 64 * first
        x, rate = soundfile.read(str(audio), start=start, stop=start + 512 + 64 * (columns - 1),
                                 dtype="float64")
        ref = specgram(x, NFFT=512, Fs=rate, noverlap=512 - 64)[0]
        np.testing.assert_allclose(s[:, first : first + columns], ref, rtol=1e-9, atol=0)


def member_crc(fh, key: str = "s.npy") -> tuple[int, int]:
    with zipfile.ZipFile(fh) as archive:
        info = archive.getinfo(key)
        return info.file_size, info.CRC


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=44100)
    parser.add_argument("--to", nargs="+", choices=["local", "s3"], default=["local", "s3"])
    parser.add_argument("--via", choices=["library", "flow"], default="library",
                        help="make_spectrogram_files, or spectroflow run (the flow, one worker)")
    parser.add_argument("--code", default=None,
                        help="also run a git revision's code (a worktree of it, on PYTHONPATH)")
    parser.add_argument("--s3-endpoint", default=None, metavar="URL",
                        help="an S3-compatible server to write to instead of moto's (see above)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="spectroflow-long-") as tmp:
        work = Path(tmp)
        audio_dir = work / "audio"
        audio_dir.mkdir()
        audio = audio_dir / "long.wav"
        make_recording(audio, args.minutes, args.rate)
        codes: list[tuple[str, str | None]] = [("this checkout", None)]
        if args.code:
            tree = work / "code"
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", str(tree),
                            args.code], check=True, capture_output=True)
            codes.append((args.code, str(tree / "src")))
        print(f"{args.minutes:g} min at {args.rate} Hz: {audio.stat().st_size / 2**20:.0f} MB "
              f"of int16 audio, {8 * args.minutes * 60 * args.rate / 2**20:.0f} MB as float64\n")
        print(f"through {args.via}\n")
        print("| code | to | seconds | peak RSS of the process tree (MB) | output (MB) |")
        print("|---|---|---:|---:|---:|")
        local_crc = None
        try:
            for index, (label, pythonpath) in enumerate(codes):
                for target in [t for t in ("local", "s3") if t in args.to]:  # local first
                    if target == "local":
                        dest = str(work / f"out-{index}")
                        result = measure(str(audio), dest, pythonpath, args.via)
                        size = os.path.getsize(result["output"])
                        if pythonpath is None:
                            check_local(result["output"], audio)
                        with open(result["output"], "rb") as fh:
                            crc = member_crc(fh)
                        local_crc = local_crc or crc
                        os.remove(result["output"])
                    else:
                        import fsspec

                        source, outputs = (on_server(args.s3_endpoint, audio_dir)
                                           if args.s3_endpoint else start_s3(audio_dir, 1))
                        result = measure(f"{source}/long.wav", outputs(index), pythonpath, args.via)
                        fs = fsspec.filesystem("s3")
                        size = fs.size(result["output"])
                        with fs.open(result["output"], "rb") as fh:
                            crc = member_crc(fh)
                        fs.rm(result["output"])
                    if local_crc is not None and crc != local_crc:
                        raise SystemExit(f"{target} output of {label} differs from the first one")
                    print(f"| {label} | {target} | {result['seconds']:.1f} | "
                          f"{result['peak_mb']:.0f} | {size / 2**20:.0f} |", flush=True)
        finally:
            stop_s3()
            if args.code:
                subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force",
                                str(work / "code")], check=False, capture_output=True)
    if "local" in args.to:
        print("\nlocal output checked against matplotlib.mlab.specgram (first and last 500 "
              "columns); every output's s.npy has the same size and CRC-32 as it")
    else:
        print("\nS3 outputs not checked: add --to local to compare them with a checked one")


if __name__ == "__main__":
    main()
