"""The one layer that retries storage requests: transient faults (:func:`is_transient`) are tried
again with exponential backoff and jitter, each retry logged as a warning.

It is the only one. s3fs and botocore would each retry a request on their own, out of sight and
multiplying the attempts under a fault that does not clear; on the filesystems spectroflow builds
theirs are off (see :meth:`spectroflow.storage.s3.S3Backend.filesystem`), and Prefect's tasks do
not retry storage faults either. A request of a multipart upload or a page of a listing is
retried alone; work that goes through a library's own storage calls (zarr) is retried whole.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import tenacity

from .. import names
from .errors import is_transient

logger = names.get_logger("spectroflow.storage")
P = ParamSpec("P")
T = TypeVar("T")

#: Attempts per storage request, and the backoff cap in seconds.
RETRY_ATTEMPTS = 6
RETRY_MAX_WAIT = 8.0

#: The arguments a retried call names its path with, in the order looked for.
_WHERE = ("path", "url", "location")


def retrying(func: Callable[P, T]) -> Callable[P, T]:
    """``func``, called again on transient faults, up to :data:`RETRY_ATTEMPTS` attempts in all;
    any other error, or the last attempt's, is raised as it is.

    Each retry is logged as a warning that names the operation (the call's ``operation``
    argument if it has one, else ``func``'s name), the path (its ``path``, ``url`` or
    ``location`` argument), the attempt, the wait and the error. A decorator, or a wrapper for
    one call: ``retrying(backend.kind)(path)``.

    Examples
    --------
    >>> calls = []
    >>> @retrying
    ... def read(path):
    ...     calls.append(path)
    ...     if len(calls) == 1:
    ...         raise ConnectionResetError("reset by peer")
    ...     return b"data"
    >>> read("bucket/a.wav"), calls
    (b'data', ['bucket/a.wav', 'bucket/a.wav'])
    """
    signature = inspect.signature(func)

    def log(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None  # before a sleep
        exc = state.outcome.exception()
        arguments = signature.bind_partial(*state.args, **state.kwargs).arguments
        where = next((arguments[name] for name in _WHERE if name in arguments), "?")
        logger.warning(
            "transient storage error in %s of %s (attempt %d of %d), retrying in %.2f s: %s: %s",
            arguments.get("operation", func.__name__), where, state.attempt_number,
            RETRY_ATTEMPTS, state.next_action.sleep, type(exc).__name__, exc)

    return tenacity.retry(
        retry=tenacity.retry_if_exception(is_transient),
        wait=_wait,
        stop=lambda state: state.attempt_number >= RETRY_ATTEMPTS,
        before_sleep=log,
        reraise=True,
    )(func)


def _wait(state: tenacity.RetryCallState) -> float:
    # Built at each retry, as the attempts are counted, so the module's values are those in force.
    return tenacity.wait_random_exponential(multiplier=0.1, max=RETRY_MAX_WAIT)(state)
