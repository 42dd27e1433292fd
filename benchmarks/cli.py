"""How long a small job takes from the command line, against the library doing the same work.

    python benchmarks/cli.py                 # 6 cbin recordings of gy6or6, 2 workers, 3 rounds

Every round runs, each in a fresh process, on the same recordings into an empty destination:

- library: ``spectroflow.run`` called from a Python script (its import included);
- command: ``spectroflow run SOURCE DEST``, no Prefect server configured (the default path:
  this machine's cores, no Prefect);
- command --flow: the same as a Prefect flow on a local Dask cluster, with the temporary Prefect
  API it starts;
- command, server: ``spectroflow run`` with ``PREFECT_API_URL`` set to a ``prefect server``
  started once before the rounds (the flow, as on a machine that runs a server).

Each figure is the median wall time of its rounds; the differences from the library are the
medians of the differences within each round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SPECTROFLOW_SAMPLE_DATA", HERE.parents[1] / "shared" / "data"))
SOURCE = DATA / "gy6or6" / "032312"
BIN = Path(sys.executable).parent
LIBRARY = """
import sys
import spectroflow
summary = spectroflow.run("cbin", {}, sys.argv[2], audio_dir=sys.argv[1], num_workers=int(sys.argv[3]))
assert summary.counts == {"written": 6}, summary
"""


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds


@contextmanager
def prefect_server(home: Path, env: dict[str, str]):
    """``prefect server start`` on a free port of 127.0.0.1; yields its API URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_UI_ENABLED": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("prefect server did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, metavar="N")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "AWS_EC2_METADATA_DISABLED": "true"}
    with tempfile.TemporaryDirectory(prefix="spectroflow-cli-bench-") as tmp:
        root = Path(tmp)
        command = [str(BIN / "spectroflow"), "run", str(SOURCE)]
        options = ["--audio-format", "cbin", "--workers", str(args.workers)]
        # A Prefect home already made, as on a machine that ran Prefect before: the temporary
        # API migrates a new database first, a one-time cost.
        local = {**env, "PREFECT_HOME": str(root / "home")}
        timed([*command, str(root / "warm-up"), *options, "--flow"], local)
        rounds: list[dict[str, float]] = []
        with prefect_server(root / "server-home", env) as url:
            served = {**local, "PREFECT_API_URL": url}
            for i in range(args.repeat):
                out = root / f"round-{i}"
                rounds.append({
                    "library": timed([sys.executable, "-c", LIBRARY, str(SOURCE),
                                      str(out / "library"), str(args.workers)], local),
                    "command": timed([*command, str(out / "command"), *options], local),
                    "command --flow": timed([*command, str(out / "flow"), *options, "--flow"],
                                            local),
                    "command, server": timed([*command, str(out / "server"), *options], served),
                })
                shutil.rmtree(out)
    print(f"6 cbin recordings ({SOURCE}), {args.workers} workers, {args.repeat} rounds, "
          f"{os.cpu_count()} cores")
    print(f"{'path':<18}{'median s':>10}{'- library s':>14}")
    for name in rounds[0]:
        median = statistics.median(r[name] for r in rounds)
        over = statistics.median(r[name] - r["library"] for r in rounds)
        print(f"{name:<18}{median:>10.2f}{over:>14.2f}")


if __name__ == "__main__":
    main()
