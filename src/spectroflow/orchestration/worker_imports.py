"""A Dask worker preload that imports what spectroflow's tasks need before the worker registers.

A worker's first task, unpickled, imports Prefect and spectroflow's tasks: 1.2 s of CPU before
its first file. This preload does those imports while the worker starts, on a thread (the
worker's event loop keeps answering its nanny), and the worker registers with the scheduler only
once they are done. No task can then arrive while they are under way: a task unpickled on the
event loop while another thread was importing Prefect made Python's import locks detect a
deadlock ("Failed to initialize plugins: deadlock detected by _ModuleLock(...)"), and Prefect's
plugin hooks were skipped on that worker.

Load it with ``preload=[..., "spectroflow.orchestration.worker_imports"]``, after
:mod:`spectroflow.orchestration.worker_exit`, whose exit handler must be registered before Prefect's
(spectroflow does so for the local clusters it starts).
"""

from __future__ import annotations

import asyncio


def _import_tasks() -> None:
    # Prefect, prefect_dask and the tasks, as unpickling a batch task would.
    try:
        import spectroflow.orchestration.cluster  # noqa: F401
    except Exception:  # noqa: BLE001 - unpickling the task raises it again, where it is reported
        pass


async def dask_setup(worker) -> None:
    await asyncio.to_thread(_import_tasks)
