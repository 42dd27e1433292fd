"""A Dask worker preload that imports what spectroflow's tasks need while the worker starts.

A worker started for a flow run waits 0.3-0.7 s between starting and receiving its first task
(registering with the scheduler while the flow creates its client and submits the batches),
and only then, unpickling that task, imports Prefect and spectroflow's tasks: 1.2 s of CPU
before its first file. This preload starts those imports on a background thread as soon as the
worker has started, so that they overlap the wait. A task that arrives sooner waits for the
import in progress (Python's per-module import locks); nothing is imported twice.

Load it with ``preload=[..., "spectroflow.worker_imports"]``, after
:mod:`spectroflow.worker_exit`, whose exit handler must be registered before Prefect's
(spectroflow does so for the local clusters it starts).
"""

from __future__ import annotations

import threading


def _import_tasks() -> None:
    # spectroflow.tasks imports Prefect and prefect_dask, as unpickling a batch task would.
    try:
        import spectroflow.tasks  # noqa: F401
    except Exception:  # noqa: BLE001 - unpickling the task raises it again, where it is reported
        pass


def dask_setup(worker) -> None:
    threading.Thread(target=_import_tasks, name="spectroflow-imports", daemon=True).start()
