"""Flow runs of a long-lived runner (``deployments/serve.py``) started warm.

Prefect's runner starts each run of a served flow in a fresh interpreter (multiprocessing's
``spawn``), which imports Prefect and spectroflow again: about 2 s of CPU before every run, most
of a small run's time. Python's ``forkserver`` start method keeps one process that has imported
them and forks each new process from it, in milliseconds. The fork is made from that server,
which runs no thread, never from the runner itself, so it is as safe as ``spawn``.

Prefect chooses the start method inside ``prefect.flow_engine.run_flow_in_subprocess``:
:func:`flow_runs_forked` has it take the forkserver, for as long as the block runs. If a Prefect
release chooses its start method otherwise, runs start as Prefect starts them, and a warning
says so.
"""

from __future__ import annotations

import multiprocessing
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing import forkserver
from typing import Any

from .. import names

logger = names.get_logger("spectroflow.orchestration.forkserver")

#: What the server imports before it forks: the flows, and through them Prefect, Dask and
#: spectroflow's library.
FLOW_MODULES = ("spectroflow.flows.spectrograms", "spectroflow.flows.ingest")


class _Forking(types.ModuleType):
    """``multiprocessing`` as ``prefect.flow_engine`` sees it: every context is the forkserver's."""

    def __init__(self, context: Any):
        super().__init__("multiprocessing")
        self._context = context

    def get_context(self, method: str | None = None) -> Any:
        return self._context

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


@contextmanager
def flow_runs_forked(preload: Sequence[str] = FLOW_MODULES) -> Iterator[None]:
    """Start the flow runs of this process's Prefect runner as forks of a server process that
    imported ``preload`` once (see the module's description)."""
    from prefect import flow_engine

    if getattr(flow_engine, "multiprocessing", None) is not multiprocessing:
        logger.warning("this Prefect release starts flow runs in a way spectroflow does not "
                       "know: each run starts a fresh interpreter")
        yield
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    forkserver.ensure_running()  # the imports now, not in the first run
    flow_engine.multiprocessing = _Forking(context)
    try:
        yield
    finally:
        flow_engine.multiprocessing = multiprocessing
