"""Patience for Prefect's temporary API, which a run without ``PREFECT_API_URL`` starts.

On a fresh Prefect home the temporary server creates and migrates its database before it
answers: about 18 s on a busy two-core machine, against Prefect's default limit of 20 s, after
which the run fails with "Timed out while attempting to connect to ephemeral Prefect API
server". spectroflow's entry points (the flows' scripts, ``spectroflow run``) wait longer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

#: Seconds to wait for the temporary API to answer, unless the user set
#: ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``.
STARTUP_TIMEOUT = 180
_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


@contextmanager
def patient_start(timeout: int = STARTUP_TIMEOUT) -> Iterator[None]:
    """Within the block, wait up to ``timeout`` seconds for a temporary API to start.

    A value the user set in the environment is kept; a lower one from a Prefect profile or the
    default is raised to ``timeout``. Nothing changes outside the block.
    """
    from prefect.settings import (
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    if _SETTING in os.environ or PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() >= timeout:
        yield
        return
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: timeout}):
        yield
