"""Bucket notifications POSTed over HTTP to Prefect events: the relay's route for object stores
that cannot publish to SQS.

MinIO (a ``notify_webhook`` target), Ceph RGW (a topic whose ``push-endpoint`` is an HTTP URL)
and any sender of S3 event notifications (``{"Records": [...]}``) POST them to
``spectroflow relay --listen HOST:PORT``, which emits the same :data:`~.relay.AUDIO_CREATED`
events as the queue's route (:mod:`.relay`): the same parsing, the same event ids, the same
memory of the events relayed already.

At least once, as on the queue: a notification is answered 200 only after the Prefect API
accepted its objects' events, and 503 with a ``Retry-After`` when the API could not be reached
or refused them; its sender keeps what was not answered 2xx and sends it again (MinIO with a
``queue_dir``, Ceph for a persistent topic). The other answers:

- 400 for a body that is not a notification, or none of whose records could be read, saying
  why (each unreadable record is logged once, as on the queue);
- 401 without the token (:data:`TOKEN_VARIABLE`), sent as ``Authorization: Bearer TOKEN``
  (MinIO's ``auth_token``) or as the password of Basic credentials (a URL's
  ``user:TOKEN@host``, which is how Ceph sends a secret);
- 413 for a body over the limit: told by its ``Content-Length``, or as soon as the bytes
  received pass it; the rest is not read;
- 405 for another method than POST; ``GET /health`` answers 200, for probes.

The new objects of the notifications received within a few seconds of the first (``window``)
are then announced together, by an :data:`~.relay.AUDIO_BATCH` event per bucket, as the queue's
route gathers its messages: in the background, so that a sender that waits for each answer
before its next notification (MinIO's and Ceph's queues) is not held for the window. A batch is
sent at shutdown too; one that a killed relay held, or that the API refused for a minute, is
left to the ingest deployment's periodic run (logged as an error).

The server is uvicorn's, with a Starlette application; SIGTERM or Ctrl-C stop it after the
requests in progress were answered (within :data:`GRACE` seconds).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import tenacity
from prefect.events import Event
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .relay import (
    AUDIO_BATCH,
    AUDIO_CREATED,
    BATCH_LIMIT,
    WINDOW,
    Accepted,
    CreatedObject,
    batch_events,
    log_retry,
    log_to_stderr,
    logger,
    posting_events,
    prefect_api,
    read_notification,
    sigterm_interrupts,
)

#: The environment variable that holds the token senders must present.
TOKEN_VARIABLE = "SPECTROFLOW_RELAY_TOKEN"
#: The largest body read by default, in bytes: a notification of one object is about 2 KiB.
MAX_BODY = 1 << 20
#: Seconds a sender is asked to wait before sending again what the Prefect API did not accept.
RETRY_AFTER = 5
#: Seconds a batch's events are retried for while the Prefect API fails.
BATCH_RETRY = 60
#: Seconds that SIGTERM or Ctrl-C leave the requests in progress to be answered; those still
#: unanswered then are cut off, and their senders send them again.
GRACE = 20


def presented_token(authorization: str) -> str | None:
    """The token an ``Authorization`` header carries: a bearer token, or the password of Basic
    credentials (the user name is not checked); None for anything else.

    >>> presented_token("Bearer s3cret")
    's3cret'
    >>> presented_token("Basic " + base64.b64encode(b"spectroflow:s3cret").decode())
    's3cret'
    >>> presented_token("Basic not-base64!"), presented_token("Token s3cret")
    (None, None)
    """
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


@dataclass(frozen=True)
class Listen:
    """Where the relay listens: ``HOST:PORT`` (``[::1]:PORT`` for an IPv6 address).

    >>> Listen.parse("127.0.0.1:8080"), Listen.parse("[::1]:8080").host
    (Listen(host='127.0.0.1', port=8080), '::1')
    """

    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> Listen:
        """Raises ValueError for anything but ``HOST:PORT``."""
        host, colon, port = value.rpartition(":")
        if not colon or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"--listen takes HOST:PORT, e.g. 127.0.0.1:8080, not {value!r}")
        return cls(host.removeprefix("[").removesuffix("]"), int(port))

    def socket(self, token: str | None) -> socket.socket:
        """A socket bound and listening here.

        Raises
        ------
        ValueError
            The address is not a loopback one and there is no token (anyone who reaches it
            could announce objects), or it cannot be listened on.
        """
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        except socket.gaierror as exc:
            raise ValueError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        if token is None and not ipaddress.ip_address(address[0]).is_loopback:
            raise ValueError(f"set {TOKEN_VARIABLE} to listen on {address[0]}, which is not a "
                             "loopback address: without a token, anyone who reaches it could "
                             "announce objects")
        # Its protocol named (IPPROTO_TCP, not 0): asyncio sets TCP_NODELAY on the connections
        # only then, without which each answer waits for the client's delayed ACK.
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen()
        except OSError as exc:
            sock.close()
            raise ValueError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        return sock


def _refusal(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    # Closing the connection: the body, if any, is left unread.
    return PlainTextResponse(f"{reason}\n", status, headers={"Connection": "close", **(headers or {})})


class Batches:
    """The new objects of the notifications received within ``window`` seconds of the first,
    announced together by their batch events (:func:`.relay.batch_events`; at most ``limit``
    objects a batch), in a background task. Used on the event loop's thread; ``emit`` runs in a
    worker thread."""

    def __init__(self, emit: Callable[[list[Event]], None], window: float = WINDOW,
                 limit: int = BATCH_LIMIT):
        self.window, self.limit = window, limit
        self._emit = emit
        self._open: dict[uuid.UUID, CreatedObject] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task] = set()

    def add(self, objects: list[CreatedObject]) -> None:
        """Add ``objects`` to the batch open now, opening one (sent ``window`` seconds later)."""
        if not self._open:
            self._timer = asyncio.get_running_loop().call_later(self.window, self._close)
        self._open.update((obj.event_id, obj) for obj in objects)
        if len(self._open) >= self.limit:
            self._close()

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        batch, self._open, self._timer = list(self._open.values()), {}, None
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[CreatedObject]) -> None:
        """Emit the batch's events, retried as the queue's route retries, for a minute at most."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type((httpx.HTTPError, OSError)),
            wait=tenacity.wait_exponential(multiplier=1, max=30),
            stop=tenacity.stop_after_delay(BATCH_RETRY), reraise=True,
            before_sleep=log_retry(f"emitting the batch of {len(batch)} objects"))
        try:
            await retrying(run_in_threadpool, self._emit, batch_events(batch))
        except (httpx.HTTPError, OSError) as exc:
            logger.error("the batch of %d objects (%s, ...) was not accepted, and is left to the "
                         "periodic ingest run: %s: %s", len(batch), batch[0].url,
                         type(exc).__name__, exc)

    async def flush(self) -> None:
        """Send the open batch now and wait for every batch being sent (at shutdown)."""
        self._close()
        if self._sending:
            await asyncio.gather(*self._sending)


class Webhook:
    """The ASGI application (:attr:`app`) that turns the notifications POSTed to ``/`` into
    events.

    Parameters
    ----------
    emit : callable
        Sends a list of events to Prefect; returns once the API accepted them, raises otherwise.
        Called in a worker thread, a request at a time or several at once.
    token : str or None
        What senders must present (:func:`presented_token`); None lets anyone send.
    max_body : int
        The largest body read, in bytes.
    window : float
        Seconds from a batch's first new object to its events (see :class:`Batches`).
    """

    def __init__(self, emit: Callable[[list[Event]], None], token: str | None,
                 max_body: int = MAX_BODY, window: float = WINDOW):
        self.max_body = max_body
        self._emit = emit
        self._batches = Batches(emit, window)
        self._token = token
        # Used on the event loop's thread only.
        self._accepted = Accepted()
        self.app = Starlette(routes=[Route("/", self.notified, methods=["POST"]),
                                     Route("/health", self.health, methods=["GET"])])

    async def notified(self, request: Request) -> Response:
        if self._token is not None:
            presented = presented_token(request.headers.get("authorization", ""))
            if presented is None or not hmac.compare_digest(presented.encode(), self._token.encode()):
                return _refusal(401, f"present the token of {TOKEN_VARIABLE}",
                                {"WWW-Authenticate": 'Bearer realm="spectroflow relay"'})
        body = await self._body(request)
        if body is None:
            return _refusal(413, f"a body of at most {self.max_body} bytes")
        source = f"POST from {request.client.host if request.client else 'an unknown client'}"
        try:
            objects, rejected = read_notification(body.decode(), source)
        except ValueError as exc:  # UnicodeDecodeError included
            logger.warning("%s refused: %s", source, exc)
            return PlainTextResponse(f"{exc}\n", 400)
        if rejected and not objects:
            return PlainTextResponse("no record could be read: " + "; ".join(rejected) + "\n", 400)
        new = self._accepted.new(objects)
        if new:
            try:
                await run_in_threadpool(self._emit, [obj.event() for obj in new])
            except (httpx.HTTPError, OSError) as exc:
                logger.warning("%s: emitting events to Prefect failed, answered 503: %s: %s",
                               source, type(exc).__name__, exc)
                return PlainTextResponse("the Prefect API did not accept the events; send again\n",
                                         503, headers={"Retry-After": str(RETRY_AFTER)})
            for obj in new:
                logger.info("relayed %s", obj.url)
            self._accepted.add(new)
            self._batches.add(new)
        return JSONResponse({"objects": len(objects), "relayed": len(new),
                             "dropped": len(rejected)})

    async def _body(self, request: Request) -> bytes | None:
        """The request's body, or None if it is longer than :attr:`max_body`, which is known
        from its ``Content-Length`` or as soon as the bytes received pass the limit."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def flush(self) -> None:
        """Send the batch held now (see :meth:`Batches.flush`)."""
        await self._batches.flush()

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")


def run(listen: str, max_body: int = MAX_BODY, window: float = WINDOW) -> None:
    """Relay the notifications POSTed to ``listen`` (``HOST:PORT``) until SIGTERM or Ctrl-C.

    Senders must present the token in :data:`TOKEN_VARIABLE`, if it is set; it must be set to
    listen on an address other than a loopback one. Events go to ``PREFECT_API_URL``.

    Raises
    ------
    ValueError
        No Prefect API is configured, ``listen`` is not ``HOST:PORT`` or cannot be listened
        on, or a token is needed and not set.
    """
    import uvicorn

    where = Listen.parse(listen)
    token = os.environ.get(TOKEN_VARIABLE) or None
    api = prefect_api()
    sock = where.socket(token)
    with sock, log_to_stderr(), posting_events() as emit:
        webhook = Webhook(emit, token, max_body, window)
        # Its own logging left alone: it would configure the root logger.
        server = uvicorn.Server(uvicorn.Config(webhook.app, log_config=None, access_log=False,
                                               lifespan="off", server_header=False,
                                               timeout_graceful_shutdown=GRACE))
        host, port = sock.getsockname()[:2]
        logger.info("listening on %s:%d%s, relaying to %s as %s events, and %s events of "
                    "what %g s bring", host, port, "" if token else " (no token)", api,
                    AUDIO_CREATED, AUDIO_BATCH, window)
        try:
            # uvicorn stops gracefully on SIGTERM or SIGINT, then raises it again.
            with sigterm_interrupts():
                asyncio.run(_serve(server, sock, webhook))
        except KeyboardInterrupt:
            pass
        logger.info("stopped")


async def _serve(server: Any, sock: socket.socket, webhook: Webhook) -> None:
    """``server`` on ``sock`` until stopped; then the batch it holds is sent."""
    try:
        await server.serve(sockets=[sock])
    finally:
        await webhook.flush()
