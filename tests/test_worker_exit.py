"""The worker preload that skips interpreter teardown: what must still happen at exit, and when."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import atexit, logging, sys, types
    from distributed.core import Status
    from spectroflow.orchestration import worker_exit

    worker = types.SimpleNamespace(status=Status.running)
    worker_exit.dask_setup(worker)
    marker = sys.argv[1]
    atexit.register(lambda: open(marker, "w").write("ran"))   # registered later: runs first
    handler = logging.FileHandler(sys.argv[2], delay=False)
    logging.getLogger("t").addHandler(handler)
    handler.stream.write("buffered log line\\n")             # only written out if flushed
    sys.stdout.write("unflushed output")
    worker.status = Status.closed if sys.argv[3] == "closed" else Status.closing
    sys.exit(3)
""")


@pytest.mark.parametrize("how", ["closed", "crashed"])
def test_exit_after_close_keeps_later_handlers_logs_and_output(tmp_path, how):
    marker, log = tmp_path / "marker", tmp_path / "log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(marker), str(log), how],
                          capture_output=True, text=True, timeout=120)
    assert marker.read_text() == "ran"
    assert log.read_text() == "buffered log line\n"
    assert done.stdout == "unflushed output"
    # A worker that closed exits cleanly (0) without tearing down the interpreter; any other exit
    # is Python's own, with its own exit code.
    assert done.returncode == (0 if how == "closed" else 3)
