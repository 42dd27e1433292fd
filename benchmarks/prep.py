"""``spectroflow prep`` against ``vak prep`` (vak 1.1.0), on the same recordings and cores.

    python benchmarks/prep.py --vak-python /path/to/vak-env/bin/python     # 300 recordings
    python benchmarks/prep.py --recordings 60 --cores 1

Workload: the 6 gy6or6 recordings of the sample data (``.cbin``, ``.rec`` and ``.cbin.not.mat``)
repeated as hard links under distinct names (``r0001-<name>``) in one folder, since vak finds
recordings only in ``data_dir``'s top folder. Both tools get one config: the gy6or6 TweetyNet
config of ``vak-reference/prep-gy6or6-tweety``, with the split's durations scaled to the
workload (``train_dur`` a quarter of it, ``val_dur`` 15 %, ``test_dur = -1``: the rest), so every
recording is in the dataset. (vak deals recordings to the splits at random and gives the rest to
the -1 split once ``train`` is done: a larger ``train_dur`` runs out of recordings.)

Each tool runs once, as its own command in a fresh process (``python -m vak prep CONFIG``,
``spectroflow prep CONFIG --workers N``), with every process it starts pinned to ``--cores``
CPUs; vak's dask bags get as many worker processes (``DASK_NUM_WORKERS``). The figures: the
command's wall time (imports included: a user waits for them too; the time each tool takes to
import is printed beside it), and the peak of the summed RSS of the command's process tree,
sampled every 50 ms. Then the two datasets are compared: the same recordings, and for each
the same duration, ``timebin_dur`` and frame labels (the splits differ: vak's is unseeded).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SPECTROFLOW_SAMPLE_DATA", HERE.parents[1] / "shared" / "data"))
SOURCE = DATA / "gy6or6" / "032312"
CONFIG = DATA / "vak-reference" / "prep-gy6or6-tweety" / "gy6or6_prep.before.toml"
#: What each tool imports to run its prep command, timed on its own.
IMPORTS = {"vak": "import vak.cli.prep", "spectroflow": "import spectroflow.cli, spectroflow.vakprep"}


def make_workload(root: Path, n: int) -> tuple[Path, float]:
    """``n`` recordings with their ``.rec`` and annotation, hard-linked under distinct names;
    their total duration in seconds."""
    import evfuncs

    originals = root / "sample"  # hard links need the originals on root's file system
    originals.mkdir(exist_ok=True)
    cbins = sorted(SOURCE.glob("*.cbin"))
    durations = {}
    for cbin in cbins:
        for path in (cbin, cbin.with_suffix(".rec"), cbin.with_name(cbin.name + ".not.mat")):
            if not (originals / path.name).exists():
                shutil.copyfile(path, originals / path.name)
        data, rate = evfuncs.load_cbin(str(cbin))
        durations[cbin.name] = len(data) / rate
    folder = root / f"recordings-{n}"
    folder.mkdir()
    total = 0.0
    for i in range(n):
        cbin = cbins[i % len(cbins)]
        prefix = f"r{i // len(cbins):04d}-"
        for name in (cbin.name, cbin.with_suffix(".rec").name, cbin.name + ".not.mat"):
            os.link(originals / name, folder / (prefix + name))
        total += durations[cbin.name]
    return folder, total


def write_config(path: Path, data_dir: Path, output_dir: Path, total_s: float) -> None:
    """The reference config for this workload: its folders, and durations that use it all."""
    text = CONFIG.read_text()
    text = re.sub(r'(?m)^data_dir = .*$', f'data_dir = "{data_dir}"', text)
    text = re.sub(r'(?m)^output_dir = .*$', f'output_dir = "{output_dir}"', text)
    text = re.sub(r'(?m)^train_dur = .*$', f"train_dur = {total_s * 0.25:.0f}", text)
    text = re.sub(r'(?m)^val_dur = .*$', f"val_dur = {total_s * 0.15:.0f}", text)
    text = re.sub(r'(?m)^test_dur = .*$', "test_dur = -1", text)
    output_dir.mkdir(parents=True)  # vak wants it to exist
    path.write_text(text)


def _pinned(cores: int):
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    return lambda: os.sched_setaffinity(0, cpus)


def timed(command: list[str], cores: int, env: dict[str, str]) -> dict:
    """Run ``command`` on ``cores`` CPUs: wall time, peak RSS of its process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=_pinned(cores))
    peak = [0]

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
            while proc.poll() is None:
                total = 0
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                peak[0] = max(peak[0], total)
                time.sleep(0.05)
        except psutil.NoSuchProcess:
            return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"wall_s": wall, "peak_rss_mb": peak[0] / 2**20}


def import_time(python: str, tool: str, cores: int, env: dict[str, str]) -> float:
    return timed([python, "-c", IMPORTS[tool]], cores, env)["wall_s"]


def dataset_of(output_dir: Path) -> Path:
    (found,) = output_dir.glob("*-vak-frame-classification-dataset-generated-*")
    return found


def compare(vak_dir: Path, ours_dir: Path) -> str:
    """Raise if the datasets disagree; else say what was compared."""
    datasets = {"vak": dataset_of(vak_dir), "spectroflow": dataset_of(ours_dir)}
    tables = {}
    for tool, path in datasets.items():
        meta = json.loads((path / "metadata.json").read_text())
        table = pd.read_csv(path / meta["dataset_csv_filename"])
        table.index = table.audio_path.map(lambda p: Path(p).name)
        tables[tool] = table
    vak, ours = tables["vak"], tables["spectroflow"]
    if set(vak.index) != set(ours.index):
        raise SystemExit(f"different recordings: {len(vak)} in vak's dataset, {len(ours)} in "
                         f"spectroflow's; e.g. {sorted(set(vak.index) ^ set(ours.index))[:3]}")
    labelmaps = {tool: (path / "labelmap.json").read_text() for tool, path in datasets.items()}
    if json.loads(labelmaps["vak"]) != json.loads(labelmaps["spectroflow"]):
        raise SystemExit(f"labelmaps differ: {labelmaps}")
    for name, row in vak.iterrows():
        mine = ours.loc[name]
        if (row.duration, row.timebin_dur) != (mine.duration, mine.timebin_dur):
            raise SystemExit(f"{name}: vak duration {row.duration}, timebin_dur "
                             f"{row.timebin_dur}; spectroflow {mine.duration}, {mine.timebin_dur}")
        labels = [np.load(datasets[tool] / table.loc[name, "multi_frame_labels_path"])
                  for tool, table in tables.items()]
        if labels[0].dtype != labels[1].dtype or not np.array_equal(*labels):
            raise SystemExit(f"{name}: frame labels differ")
    splits = {tool: table.split.value_counts().to_dict() for tool, table in tables.items()}
    return (f"{len(vak)} recordings in both, each with the same duration, timebin_dur and "
            f"frame labels; splits (recordings) vak {splits['vak']}, spectroflow "
            f"{splits['spectroflow']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", type=int, default=300, metavar="N")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)), metavar="N",
                        help="CPUs each tool runs on, and its worker processes (default: all)")
    parser.add_argument("--vak-python", default=os.environ.get("SPECTROFLOW_VAK_PYTHON"),
                        metavar="PATH", help="a Python with vak 1.1.0 installed (default: "
                        "$SPECTROFLOW_VAK_PYTHON)")
    parser.add_argument("--settle", type=float, default=10.0, metavar="S",
                        help="seconds to wait before each run, after syncing the disk")
    parser.add_argument("--root", default=None, metavar="DIR",
                        help="folder for the workload and the datasets (default: the system's "
                        "temp folder)")
    args = parser.parse_args()
    if not args.vak_python:
        raise SystemExit("give --vak-python (or SPECTROFLOW_VAK_PYTHON): a Python where vak "
                         "1.1.0 is installed")
    env = {**os.environ, "DASK_NUM_WORKERS": str(args.cores),
           "AWS_EC2_METADATA_DISABLED": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    root = Path(tempfile.mkdtemp(prefix="spectroflow-prep-bench-", dir=args.root))
    try:
        recordings, total_s = make_workload(root, args.recordings)
        print(f"{args.recordings} recordings ({total_s / 60:.1f} min of audio), {args.cores} "
              f"cores, {os.cpu_count()} on the machine")
        commands = {
            "vak": [args.vak_python, "-m", "vak", "prep"],
            "spectroflow": [sys.executable, "-c", "from spectroflow.cli import main; main()",
                            "prep", "--workers", str(args.cores), "--seed", "0"],
        }
        pythons = {"vak": args.vak_python, "spectroflow": sys.executable}
        results = {}
        for tool, command in commands.items():
            config = root / f"{tool}.toml"
            write_config(config, recordings, root / f"out-{tool}", total_s)
            os.sync()
            time.sleep(args.settle)
            results[tool] = timed([*command, str(config)], args.cores, env)
            results[tool]["import_s"] = import_time(pythons[tool], tool, args.cores, env)
            print(f"  {tool}: {results[tool]['wall_s']:.1f} s", file=sys.stderr, flush=True)
        agreement = compare(root / "out-vak", root / "out-spectroflow")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("| command | wall s | of which importing s | recordings/s | peak RSS of the tree MB |")
    print("|---|---|---|---|---|")
    for tool, result in results.items():
        print(f"| {tool} prep | {result['wall_s']:.1f} | {result['import_s']:.1f} | "
              f"{args.recordings / result['wall_s']:.1f} | {result['peak_rss_mb']:.0f} |")
    vak, ours = results["vak"], results["spectroflow"]
    print(f"\nvak prep / spectroflow prep wall time: {vak['wall_s'] / ours['wall_s']:.2f}x "
          f"({(vak['wall_s'] - vak['import_s']) / (ours['wall_s'] - ours['import_s']):.2f}x "
          "without the imports)")
    print(f"agreement: {agreement}")


if __name__ == "__main__":
    main()
