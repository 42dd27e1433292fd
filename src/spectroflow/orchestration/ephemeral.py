"""Settings for Prefect's temporary API, which a run without ``PREFECT_API_URL`` starts.

On a fresh Prefect home the temporary server creates and migrates its database before it
answers: about 18 s on a busy two-core machine, against Prefect's default limit of 20 s, after
which the run fails with "Timed out while attempting to connect to ephemeral Prefect API
server". It sends usage telemetry, which on a machine without internet logs an error traceback
in every run. And Prefect starts it as a child of the process that first needs it, in the
terminal's process group, so a Ctrl-C killed it and with it the run's record of how it ended.
spectroflow's entry points (the flows' scripts, ``spectroflow run``) start it before the run,
with SIGINT blocked, waiting longer, without telemetry.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

#: Seconds to wait for the temporary API to answer, unless the user set
#: ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``.
STARTUP_TIMEOUT = 180


@contextmanager
def temporary_api(timeout: int = STARTUP_TIMEOUT) -> Iterator[None]:
    """Without ``PREFECT_API_URL``, start the temporary API now, out of Ctrl-C's reach, waiting up
    to ``timeout`` seconds for it, without telemetry; the block's runs use it.

    Values the user set in the environment are kept; a lower limit from a Prefect profile or the
    default is raised to ``timeout``. Settings change within the block only. Prefect stops the
    server when this process exits.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    from ..interrupt import call_without_sigint

    def start() -> None:
        with get_client(sync_client=True):  # the first client starts the temporary server
            pass

    updates = {}
    limit = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
    if limit.name not in os.environ and limit.value() < timeout:
        updates[limit] = timeout
    if PREFECT_SERVER_ANALYTICS_ENABLED.name not in os.environ:
        updates[PREFECT_SERVER_ANALYTICS_ENABLED] = False
    with temporary_settings(updates):
        if not PREFECT_API_URL.value():
            call_without_sigint(start)
        yield
