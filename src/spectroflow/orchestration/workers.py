"""What a Dask worker needs to run spectroflow's tasks, applied the same way on every cluster.

A local cluster gets it when it is made (:meth:`WorkerSetup.local_cluster_kwargs`); workers of an
existing cluster, or of any cluster class (SLURM jobs, Kubernetes pods), get it from their nanny:
:class:`WorkerSetup` is a ``NannyPlugin`` the flow registers with the scheduler, and each nanny
applies it before it starts its worker process (restarting a worker that runs without it). Only
the environment a nanny itself starts in (its Python, spectroflow installed) is left to whoever
starts it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import dask.config
from distributed.diagnostics.plugin import NannyPlugin

from .. import names

logger = names.get_logger("spectroflow.orchestration.workers")

#: Dask settings for spectroflow's workers and the schedulers it starts (why each: see
#: docs/performance.md): glibc's dynamic mmap threshold kept (distributed's
#: MALLOC_TRIM_THRESHOLD_ multiplied the system time per file); the profiler off (it can deadlock a
#: worker on Python 3.11); health checks less often; no developers' message logs (they held
#: every batch's work items in the scheduler); distributed's INFO banners off in workers.
CLUSTER_CONFIG: dict[str, Any] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.nanny.pre-spawn-environ.DASK_LOGGING__DISTRIBUTED": "warning",
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.admin.low-level-log-length": 0,
}

#: What workers load before they register: worker_exit's exit handler first (it must be
#: registered before Prefect's), then the imports tasks need.
PRELOADS = ["spectroflow.orchestration.worker_exit", "spectroflow.orchestration.worker_imports"]
#: Variables of the flow's environment that workers get too.
PASSED_ENV = ("PREFECT_SERVER_ANALYTICS_ENABLED", "AWS_ENDPOINT_URL", "AWS_EC2_METADATA_DISABLED")
#: Variables a nanny must not give its worker (see :data:`CLUSTER_CONFIG`).
REMOVED_ENV = ("MALLOC_TRIM_THRESHOLD_",)


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """``CLUSTER_CONFIG``'s worker part as a nanny's process needs it (no pre-spawn entries)."""
    return {k: v for k, v in config.items() if ".pre-spawn-environ." not in k}


class WorkerSetup(NannyPlugin):
    """spectroflow's worker environment (the Prefect API, passed variables), Dask settings and
    preloads, for the nanny of every worker.

    ``restart`` is decided per nanny: a nanny whose worker already runs with all of it (a local
    cluster made with :meth:`local_cluster_kwargs`, or a worker set up by an earlier run) keeps
    it running; any other restarts it, once, with the setup applied.
    """

    name = "spectroflow-worker-setup"

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.restart = False

    @classmethod
    def for_api(cls, api_url: str | None) -> WorkerSetup:
        env = {"PREFECT_API_URL": (api_url or "").rstrip("/")}
        env.update((name, os.environ[name]) for name in PASSED_ENV if name in os.environ)
        return cls(env)

    def local_cluster_kwargs(self) -> dict[str, Any]:
        """A LocalCluster's arguments that give its workers this setup from the start."""
        return {"env": dict(self.env), "preload": list(PRELOADS)}

    def setup(self, nanny) -> None:
        env: dict[str, str] = nanny.env
        preload = _as_list(nanny.preload)
        worker_config = _flat(CLUSTER_CONFIG)
        missing = (
            any(env.get(k) != v for k, v in self.env.items())
            or any(k in env or k in nanny.pre_spawn_env or k in os.environ for k in REMOVED_ENV)
            or any(p not in preload for p in PRELOADS)
            or any(dask.config.get(k, config=nanny.config, default=object()) != v
                   for k, v in worker_config.items())
        )
        if not missing:
            return
        for name in REMOVED_ENV:
            env.pop(name, None)
            nanny.pre_spawn_env.pop(name, None)
            # A nanny puts its pre-spawn variables in its own environment, where the next
            # worker process it spawns would inherit them.
            os.environ.pop(name, None)
        env.update(self.env)
        nanny.preload = [*(p for p in preload if p not in PRELOADS), *PRELOADS]
        if nanny.process is not None:  # the next start reuses its process's arguments
            nanny.process.worker_kwargs["preload"] = nanny.preload
        dask.config.set(worker_config, config=nanny.config)
        self.restart = nanny.process is not None  # a worker started before this setup


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class _CutHeartbeats(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to communicate with scheduler during heartbeat")


def cluster_closing() -> None:
    """Run on workers (``Client.run``) as the run starts closing their cluster: a heartbeat in
    flight when the scheduler lets the worker go fails on a closed connection, which distributed
    logs as an error with its traceback; from here on it is expected, so it is not logged."""
    logging.getLogger("distributed.worker").addFilter(_CutHeartbeats())


def unseen_paths(paths: list[str]) -> list[str]:
    """The local ``paths`` this process cannot see (run on workers with ``Client.run``)."""
    return [path for path in paths if not os.path.exists(path)]


def why_unreachable(url: str, timeout: float = 10.0) -> str | None:
    """Why this process cannot reach the Prefect API at ``url``, or None if it can."""
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
