"""Stopping a flow run early: the first Ctrl-C, or a cancel asked in Prefect's UI or API."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from prefect import get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext

from .. import interrupt

#: Seconds between two looks at the flow run's state, for a cancellation asked in Prefect.
CANCEL_POLL = 1.0


@contextmanager
def watch_cancellation(stop: interrupt.Stop) -> Iterator[None]:
    """Within the block, request ``stop`` when this flow run is cancelled in Prefect's UI or API.

    Prefect marks the run Cancelling; its workers and runners stop the runs they started by
    killing their process, but a flow called in-process (``spectroflow run``, a script) has
    nobody watching: a thread asks the API for the run's state every :data:`CANCEL_POLL`
    seconds. Outside a flow run nothing is watched.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        yield
        return
    run_id, client, logger = context.flow_run.id, context.client, get_run_logger()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(CANCEL_POLL):
            try:
                state = cast(FlowRun, client.read_flow_run(run_id)).state
            except Exception as exc:  # noqa: BLE001 - the next look may succeed
                logger.debug("could not read this run's state: %s", exc)
                continue
            if state is not None and (state.is_cancelling() or state.is_cancelled()):
                stop.request(f"cancelled in Prefect ({state.name})")
                return

    watcher = threading.Thread(target=watch, name="spectroflow-cancel-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(CANCEL_POLL)  # a look at the API in flight ends on its own (a daemon)


@contextmanager
def stop_requests() -> Iterator[interrupt.Stop]:
    """A :class:`~spectroflow.interrupt.Stop` requested, within the block, by the first Ctrl-C,
    SIGTERM or SIGHUP (see :func:`~spectroflow.interrupt.stop_on_signals`) or by cancelling
    this flow run in Prefect."""
    stop = interrupt.Stop()
    with interrupt.stop_on_signals(stop), watch_cancellation(stop):
        yield stop
