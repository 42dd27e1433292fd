"""spectroflow at scale: planning a million objects, and the flow process's memory as files grow.

    python benchmarks/scale.py plan --objects 1000000      # a synthetic S3 listing, 1 000 a page
    python benchmarks/scale.py named --named 10 1000       # the objects a batch event names
    python benchmarks/scale.py flow --sizes 5000 100000    # tiny local recordings, every one written
    python benchmarks/scale.py manifest --rows 1000000     # a dataset manifest's updates

``plan``: a dry run's planning (:func:`spectroflow.plan.prepare`) over a bucket that does not
exist anywhere: an ``S3FileSystem`` whose ``list_objects_v2`` answers are made up a page at a time
(so the benchmark holds no listing). Half of the recordings have an up-to-date output and its
provenance marker under the destination, the other half nothing, so the destination's listings
are merged with the source's as a real ingest run merges them. It reports the seconds, the
process's peak RSS and the Dask tasks the run would submit.

``named``: the planning of an ingest run started by a batch event, over the objects it names (the
newest of ``--objects``, half of the others up to date), in the same synthetic bucket, which
also answers ``head_object``; every request takes ``--latency`` seconds. It reports the seconds
and the requests made by kind.

``flow``: the spectrogram flow (LocalCluster, an already running Prefect API) on tiny recordings
(2 048 samples at 8 kHz, in 100 folders): the flow process's peak RSS at each size, and where a
tiny file's time goes (seconds per 1 000 files).

``manifest``: a local dataset manifest (:mod:`spectroflow.manifest`) made by a run of ``rows``
recordings, then updated by an ingest run of 1 000 new ones (merged into it), then by 20 runs of
events of 2 recordings each (which leave their rows in the manifest's journal when it is large),
then read, then merged by a scheduled run: the seconds of each and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

HERE = Path(__file__).resolve().parent
BUCKET = "synthetic"
PAGE = 1000


def synthetic_s3(n_objects: int):
    """An s3fs filesystem class whose bucket ``synthetic`` holds ``n_objects`` recordings under
    ``audio/`` and, under ``spect/``, the up-to-date outputs and markers of every other one."""
    import hashlib

    from s3fs import S3FileSystem

    from spectroflow import provenance
    from spectroflow.params import SpectParams

    params = SpectParams()

    def name(i: int) -> str:
        return f"day{i // 1000:04d}/rec{i:07d}.wav"

    def etag(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()  # a made-up ETag

    def recording(i: int) -> dict:
        return {"Key": f"audio/{name(i)}", "Size": 4140, "ETag": f'"{etag(name(i))}"'}

    def output(i: int) -> dict:
        return {"Key": f"spect/{name(i)}.spect.npz", "Size": 55_000, "ETag": f'"{etag("o" + name(i))}"'}

    def marker(i: int) -> dict:
        key = provenance.key(f"s3://{BUCKET}/audio/{name(i)}", etag(name(i)), "wav", params,
                             etag("o" + name(i)))
        return {"Key": f"spect/{provenance.MARKERS_DIR}/{name(i)}.markers/{key}", "Size": 0,
                "ETag": f'"{etag("")}"'}

    # The bucket's keys, in order (markers, "spect/.spectroflow/...", sort before outputs):
    # each collection's keys start with its head and sort as its numbers do.
    collections = [("audio/day", recording, range(n_objects)),
                   (f"spect/{provenance.MARKERS_DIR}/day", marker, range(0, n_objects, 2)),
                   ("spect/day", output, range(0, n_objects, 2))]

    def objects(prefix: str):
        for head, make, numbers in collections:
            number = prefix.rsplit("/rec", 1)[1][:7] if "/rec" in prefix else ""
            if prefix.startswith(head) and len(number) == 7 and number.isdigit():
                # One recording's names (a lookup, not a walk of the collection).
                if int(number) in numbers and make(int(number))["Key"].startswith(prefix):
                    yield make(int(number))
            elif head.startswith(prefix) or prefix.startswith(head):
                yield from (entry for entry in map(make, numbers) if entry["Key"].startswith(prefix))

    def found(key: str) -> dict | None:
        """The entry of ``key``, if the bucket holds it (a recording, or an output)."""
        for head, make, numbers in collections:
            if key.startswith(head) and head != collections[1][0]:
                try:
                    i = int(key.rsplit("/rec", 1)[1][:7])
                except (IndexError, ValueError):
                    return None
                entry = make(i) if i in numbers else None
                return entry if entry is not None and entry["Key"] == key else None
        return None

    class SyntheticS3(S3FileSystem):
        cursors: ClassVar[dict] = {}  # continuation token -> (the rest of its listing, its first)
        #: Seconds every request takes, as a real store's round trip would.
        latency: ClassVar[float] = 0.0
        requests: ClassVar[Counter] = Counter()

        async def _call_s3(self, method, *args, **kwargs):
            self.requests[method] += 1
            if self.latency:
                await asyncio.sleep(self.latency)
            if method == "head_object" and kwargs.get("Bucket") == BUCKET:
                entry = found(kwargs["Key"])
                if entry is None:
                    raise FileNotFoundError(kwargs["Key"])
                return {"ContentLength": entry["Size"], "ETag": entry["ETag"],
                        "LastModified": "2026-12-01T00:00:00Z"}
            if method != "list_objects_v2" or kwargs.get("Bucket") != BUCKET:
                raise FileNotFoundError(f"{method} {kwargs}")
            prefix, token = kwargs.get("Prefix", ""), kwargs.get("ContinuationToken")
            stream, first = self.cursors.pop(token, None) or (objects(prefix), None)
            page = [] if first is None else [first]
            page += itertools.islice(stream, kwargs.get("MaxKeys", PAGE) - len(page))
            more = next(stream, None)
            answer: dict = {"IsTruncated": more is not None}
            if kwargs.get("Delimiter") == "/":
                answer["CommonPrefixes"] = [{"Prefix": prefix + e["Key"][len(prefix):].split("/")[0] + "/"}
                                            for e in page[:1] if "/" in e["Key"][len(prefix):]]
                answer["Contents"] = [e for e in page if "/" not in e["Key"][len(prefix):]]
                answer["IsTruncated"] = False
            else:
                answer["Contents"] = page
            if answer["IsTruncated"]:
                token = f"t{len(self.cursors)}-{page[-1]['Key']}"
                self.cursors[token] = (stream, more)
                answer["NextContinuationToken"] = token
            return answer

    return SyntheticS3


def plan_once(n_objects: int, workers: int) -> dict:
    """Plan a dry run over ``n_objects`` synthetic objects in this process (see module doc)."""
    import fsspec

    fsspec.register_implementation("s3", synthetic_s3(n_objects), clobber=True)
    from spectroflow import batching
    from spectroflow import plan as plan_mod
    from spectroflow.request import Folder, RunRequest

    request = RunRequest(source=Folder(folder=f"s3://{BUCKET}/audio"),
                         destination=f"s3://{BUCKET}/spect",
                         # Only listings are answered here; anything else fails at once, locally.
                         storage_options={"anon": True, "endpoint_url": "http://127.0.0.1:9"})
    start = time.perf_counter()
    plan = plan_mod.prepare(request, dry_run=True)
    planned = time.perf_counter() - start
    sizes = batching.sizes_for(len(plan.work), workers)
    read = sum(len(chunk) for chunk in batching.chunked(plan.work, sizes))  # as batches read it
    return {"objects": n_objects, "seconds": round(planned, 1),
            "seconds_with_batches": round(time.perf_counter() - start, 1),
            "counts": plan.counts(), "tasks": len(sizes), "read": read,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def named_once(n_objects: int, named: int, latency: float) -> dict:
    """Plan a run over ``named`` objects of ``n_objects`` (the newest ones, as a batch event
    names them; every other one up to date), each request taking ``latency`` seconds."""
    import fsspec

    synthetic = synthetic_s3(n_objects)
    synthetic.latency = latency
    fsspec.register_implementation("s3", synthetic, clobber=True)
    from spectroflow import plan as plan_mod
    from spectroflow.request import Files, RunRequest

    files = [f"s3://{BUCKET}/audio/day{i // 1000:04d}/rec{i:07d}.wav"
             for i in range(n_objects - named, n_objects)]
    request = RunRequest(source=Files(files=files, root=f"s3://{BUCKET}/audio"),
                         destination=f"s3://{BUCKET}/spect",
                         storage_options={"anon": True, "endpoint_url": "http://127.0.0.1:9"})
    start = time.perf_counter()
    plan = plan_mod.prepare(request, dry_run=True)
    return {"objects": n_objects, "named": named, "latency": latency,
            "seconds": round(time.perf_counter() - start, 2), "counts": plan.counts(),
            "requests": dict(synthetic.requests),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


#: Runs of events that :func:`manifest_once` times.
EVENT_RUNS = 20


def manifest_once(n_rows: int, new: int = 1000) -> dict:
    """Make a manifest of ``n_rows`` written recordings, then merge ``new`` more into it."""
    from spectroflow import manifest
    from spectroflow.params import SpectParams
    from spectroflow.report import FileResult

    def results(numbers: range):
        # A callable that gives the rows again (a merge that meets another run's starts over).
        return lambda: (FileResult(f"/audio/{i:08d}.wav", "written",
                                   output=f"/spect/{i:08d}.wav.spect.npz", shape=(257, 500),
                                   samplerate=32000.0, annot_path=f"/audio/{i:08d}.csv")
                        for i in numbers)

    root = tempfile.mkdtemp(prefix="spectroflow-manifest-")
    try:
        start = time.perf_counter()
        manifest.update(root, results(range(0, 2 * n_rows, 2)), SpectParams(), "wav",
                        "simple-seq")
        made = time.perf_counter() - start
        start = time.perf_counter()
        manifest.update(root, results(range(1, 2 * new, 2)), SpectParams(), "wav",
                        "simple-seq")
        merged = time.perf_counter() - start
        size = os.path.getsize(os.path.join(root, manifest.MANIFEST_NAME))
        # Runs of events, 2 recordings each, that defer (above DEFER_ABOVE_BYTES they write
        # their journal only); then a read, and the merge of the journals by a scheduled run.
        start = time.perf_counter()
        for run in range(EVENT_RUNS):
            first = 2 * new + 1 + 4 * run
            manifest.update(root, results(range(first, first + 4, 2)), SpectParams(), "wav",
                            "simple-seq", defer=True)
        deferred = (time.perf_counter() - start) / EVENT_RUNS
        start = time.perf_counter()
        rows = len(manifest.read(root))
        read = time.perf_counter() - start
        start = time.perf_counter()
        manifest.update(root, results(range(0)), SpectParams(), "wav", "simple-seq")
        journals_merged = time.perf_counter() - start
        assert rows == n_rows + new + 2 * EVENT_RUNS, rows
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"rows": n_rows, "made_s": round(made, 1), "merged_s": round(merged, 1),
            "event_run_s": round(deferred, 3), "read_s": round(read, 1),
            "journals_merged_s": round(journals_merged, 1),
            "mb": round(size / 1e6), "peak_rss_mb": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def tiny_workload(root: Path, n_files: int) -> Path:
    """``n_files`` tiny recordings in 100 folders: 100 distinct ones, hard-linked."""
    import numpy as np
    import soundfile

    originals = root / "originals"
    originals.mkdir(parents=True, exist_ok=True)
    src = root / f"tiny-{n_files}"
    for i in range(n_files):
        original = originals / f"{i % 100:03d}.wav"
        if not original.exists():
            rng = np.random.default_rng(i % 100)
            soundfile.write(original, rng.normal(0, 0.1, 2048), 8000, subtype="PCM_16")
        dest = src / f"folder{i % 100:03d}" / f"rec{i:06d}.wav"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(original, dest)
    return src


def _in_subprocess(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    plan = sub.add_parser("plan", help="plan a dry run over a synthetic S3 listing")
    plan.add_argument("--objects", type=int, nargs="+", default=[1_000_000])
    plan.add_argument("--workers", type=int, default=2)
    flow = sub.add_parser("flow", help="the flow on tiny local recordings")
    flow.add_argument("--sizes", type=int, nargs="+", default=[5000, 100_000])
    flow.add_argument("--workers", type=int, default=2)
    named = sub.add_parser("named", help="plan a run over the objects a batch event names")
    named.add_argument("--objects", type=int, default=1_000_000)
    named.add_argument("--named", type=int, nargs="+", default=[10, 1000])
    named.add_argument("--latency", type=float, default=0.02,
                       help="seconds each request takes (default 0.02, a store's round trip)")
    sub.add_parser("named-once").add_argument("args", nargs=3)
    rows = sub.add_parser("manifest", help="a dataset manifest's updates")
    rows.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    sub.add_parser("manifest-once").add_argument("rows", type=int)
    one = sub.add_parser("plan-once")
    one.add_argument("objects", type=int)
    one.add_argument("workers", type=int)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

    if args.what == "named-once":
        n_objects, n_named, latency = args.args
        print(json.dumps(named_once(int(n_objects), int(n_named), float(latency))))
    elif args.what == "named":
        for n in args.named:
            result = _in_subprocess("named-once", str(args.objects), str(n), str(args.latency))
            print(f"planning {n} objects named by an event, in a source and destination of "
                  f"{args.objects} (each request {args.latency * 1000:g} ms): {result['seconds']} s, "
                  f"requests {result['requests']}, peak RSS {result['peak_rss_mb']} MB; "
                  f"{result['counts']}", flush=True)
    elif args.what == "plan-once":
        print(json.dumps(plan_once(args.objects, args.workers)))
    elif args.what == "manifest-once":
        print(json.dumps(manifest_once(args.rows)))
    elif args.what == "manifest":
        for n in args.rows:
            result = _in_subprocess("manifest-once", str(n))
            print(f"manifest of {n} rows ({result['mb']} MB): made in {result['made_s']} s, 1 000 "
                  f"new rows merged in {result['merged_s']} s; a run of an event "
                  f"{result['event_run_s']} s, read with {EVENT_RUNS} journals "
                  f"{result['read_s']} s, journals merged in {result['journals_merged_s']} s; "
                  f"peak RSS {result['peak_rss_mb']} MB", flush=True)
    elif args.what == "plan":
        for n in args.objects:
            result = _in_subprocess("plan-once", str(n), str(args.workers))
            print(f"planning {n} objects (a synthetic S3 listing, {PAGE} a page): "
                  f"{result['seconds']} s ({result['seconds_with_batches']} s with the batches read "
                  f"back), peak RSS {result['peak_rss_mb']} MB, {result['tasks']} Dask tasks; "
                  f"{result['counts']}", flush=True)
    else:
        sys.path.insert(0, str(HERE))
        from run import run_one

        root = Path(tempfile.mkdtemp(prefix="spectroflow-scale-"))
        rss = {}
        try:
            for n in args.sizes:
                src = tiny_workload(root, n)
                measured = run_one("flow", str(src), str(root / f"out-{n}"), args.workers)
                rss[n] = measured["rss_self_mb"]
                print(f"flow on {n} tiny recordings: {measured['wall_s']:.1f} s "
                      f"({1000 * measured['wall_s'] / n:.2f} s per 1 000 files), flow process "
                      f"peak RSS {rss[n]:.0f} MB, worker peak RSS {measured['rss_child_mb']:.0f} MB",
                      flush=True)
                shutil.rmtree(root / f"out-{n}", ignore_errors=True)
                shutil.rmtree(src, ignore_errors=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if len(rss) > 1:
            first, last = min(rss), max(rss)
            print(f"flow process peak RSS at {last} files / at {first}: {rss[last] / rss[first] - 1:+.1%}")


if __name__ == "__main__":
    main()
