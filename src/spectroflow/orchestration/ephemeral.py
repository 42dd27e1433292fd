"""The temporary Prefect API that a run without ``PREFECT_API_URL`` starts.

On a fresh Prefect home the temporary server creates and migrates its database before it
answers: about 18 s on a busy two-core machine, against Prefect's default limit of 20 s, after
which the run fails with "Timed out while attempting to connect to ephemeral Prefect API
server". It sends usage telemetry, which on a machine without internet logs an error traceback
in every run. And Prefect starts it as a child in the process group of the process that first
needs it, where a terminal's Ctrl-C and ``timeout``'s SIGTERM, sent to the whole group, killed
it, and with it the run's record of how it ended (the run then hung for minutes, unable to
reach its API). spectroflow's entry points (the flows' scripts, ``spectroflow run``) start
Prefect's server application themselves, before the run, in a session of its own, waiting
longer, without telemetry, and stop it when the process exits.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

#: Seconds to wait for the temporary API to answer, unless the user set
#: ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``.
STARTUP_TIMEOUT = 180


@contextmanager
def temporary_api(timeout: int = STARTUP_TIMEOUT) -> Iterator[None]:
    """Without ``PREFECT_API_URL``, start the temporary API now (:class:`TemporaryServer`),
    waiting up to ``timeout`` seconds for it, without telemetry; the block's runs use it.

    Values the user set in the environment are kept; a lower limit from a Prefect profile or the
    default is raised to ``timeout``. Settings change within the block only. The server is
    started once per process, and stopped when the process exits.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    updates: dict = {}
    limit = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
    if limit.name not in os.environ and limit.value() < timeout:
        updates[limit] = timeout
    if PREFECT_SERVER_ANALYTICS_ENABLED.name not in os.environ:
        updates[PREFECT_SERVER_ANALYTICS_ENABLED] = False
    with temporary_settings(updates):
        if PREFECT_API_URL.value():
            yield
            return
        url = TemporaryServer.started(limit.value())
        with temporary_settings({PREFECT_API_URL: url}):
            yield


#: uvicorn with its arguments, stopping (as on SIGTERM) once its standard input ends: once the
#: process that started it is gone, however it ended (a kernel that Jupyter killed ran no exit
#: handler, and the server, in a session of its own, outlived it).
_SERVE = """\
import os, signal, sys, threading
import uvicorn.main

def watch():
    sys.stdin.buffer.read()
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[1:]]
uvicorn.main.main()
"""


class TemporaryServer:
    """Prefect's API server application (as Prefect runs its temporary one, without its UI) in a
    process of its own session: signals sent to this process's group do not reach it. It is
    stopped (SIGTERM, then SIGKILL) when this process exits, after Prefect's own exit handlers
    have sent their last logs and events to it, and stops by itself once this process is gone
    (see :data:`_SERVE`)."""

    _running: ClassVar[TemporaryServer | None] = None

    def __init__(self, timeout: float):
        from prefect.settings import get_current_settings

        env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
               # What Prefect sets for its temporary server.
               "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        deadline = time.monotonic() + timeout
        while True:
            self.port = _free_port()
            self.process = subprocess.Popen(
                [sys.executable, "-c", _SERVE, "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
                env=env, stdin=subprocess.PIPE, start_new_session=True)
            # Registered before Prefect's services register theirs, so it runs after them.
            atexit.register(self.stop)
            if self._answers(deadline):
                return
            if self.process.returncode != 3:  # 3: the port was taken meanwhile; another
                self.stop()
                raise RuntimeError(
                    f"Prefect's temporary API did not answer within {timeout:.0f} s (exit code "
                    f"{self.process.returncode}): set PREFECT_API_URL to a running server, or "
                    "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @classmethod
    def started(cls, timeout: float) -> str:
        """The URL of this process's temporary server, started now if it is not running."""
        if cls._running is None or cls._running.process.poll() is not None:
            cls._running = cls(timeout)
        return cls._running.url

    def _answers(self, deadline: float) -> bool:
        import httpx

        with httpx.Client() as client:
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if client.get(f"{self.url}/health", timeout=5).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
