"""Settings for Prefect's temporary API, which a run without ``PREFECT_API_URL`` starts.

On a fresh Prefect home the temporary server creates and migrates its database before it
answers: about 18 s on a busy two-core machine, against Prefect's default limit of 20 s, after
which the run fails with "Timed out while attempting to connect to ephemeral Prefect API
server". And it sends usage telemetry, which on a machine without internet logs an error
traceback in every run. spectroflow's entry points (the flows' scripts, ``spectroflow run``)
wait longer and start it without telemetry.
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
    """Within the block, a temporary API waits up to ``timeout`` seconds to start and sends no
    telemetry.

    Values the user set in the environment are kept; a lower limit from a Prefect profile or the
    default is raised to ``timeout``. Nothing changes outside the block (the temporary server is
    started with the settings in force when it starts).
    """
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    updates = {}
    limit = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
    if limit.name not in os.environ and limit.value() < timeout:
        updates[limit] = timeout
    if PREFECT_SERVER_ANALYTICS_ENABLED.name not in os.environ:
        updates[PREFECT_SERVER_ANALYTICS_ENABLED] = False
    with temporary_settings(updates):
        yield
