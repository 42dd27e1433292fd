"""Bucket notifications to Prefect events: the relay that a self-hosted Prefect server lacks.

S3 announces each new object with an event notification, which it can send to an SQS queue;
``spectroflow relay --queue-url URL`` reads that queue and emits one :data:`AUDIO_CREATED` event
per object, whose resource id is the object's URL. The objects that a few seconds bring
(``window``, from the first) are also named together by one :data:`AUDIO_BATCH` event per
bucket, which the ingest deployment's trigger (``deployments/serve.py``) turns into one run
over those objects alone: a burst of uploads makes a few runs, and no run lists the bucket.
Prefect Cloud's webhooks make per-object events there; the open-source server has none.
Stores that cannot publish to SQS (MinIO, Ceph) POST their notifications to
``spectroflow relay --listen HOST:PORT`` instead (:mod:`.webhook`), which shares the parsing,
the event ids and the memory of relayed events (:class:`Accepted`) with the queue's route.

At least once: a message leaves the queue only after the Prefect API accepted its events and
its batch's (``POST /api/events`` answered with a success), so a relay that stops or dies in
between leaves it there, and SQS hands it out again once its visibility timeout has passed. Each event's id is
made from the object's URL and version (S3's ``sequencer``), so a message relayed twice, or S3's
occasional duplicate notification, gives the same id, which the server drops as a duplicate
(within minutes), and so does the relay itself (over its last :data:`REMEMBERED` events).

A record it cannot read is dropped alone, the message's other records relayed. Failures that
pass (the queue or the API unreachable, throttled, failing) are retried until they clear; a
refusal of the queue that retrying cannot change (no such queue, access denied, unknown keys)
stops the relay.
"""

from __future__ import annotations

import json
import logging
import signal
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import httpx
import tenacity
from botocore.exceptions import BotoCoreError, ClientError
from prefect.events import Event, RelatedResource, Resource

from .. import names

#: The custom event that announces a new recording; its resource id is the object's URL.
AUDIO_CREATED = "spectroflow.audio.created"
#: The event that names the new recordings of a bucket that a few seconds brought (at most
#: :data:`BATCH_LIMIT`), for one ingest run to compute: its resource id is the bucket's URL
#: (``s3://bucket``), its payload's ``objects`` their URLs, and every folder holding one of
#: them is a related resource of role ``folder`` (``s3://bucket/audio``, ...: what a trigger
#: for the recordings under a source matches).
AUDIO_BATCH = "spectroflow.audio.batch"
#: Most objects a batch event names.
BATCH_LIMIT = 1000
#: Seconds from the first new object of a batch to its events, by default: the objects
#: notified meanwhile join it, so a burst of uploads makes a few runs, not one per upload.
WINDOW = 5.0
#: How many event ids the relay remembers having had accepted, to skip repeated notifications.
REMEMBERED = 10_000
#: Failures worth waiting out: the queue or the API unreachable, throttled or failing.
TRANSIENT = (BotoCoreError, ClientError, httpx.HTTPError, OSError)
#: The queue's refusals (HTTP 4xx) that pass: it is busy or was slow. Its others (no such queue,
#: access denied, unknown keys, ...) stand until someone changes the queue or the credentials.
#: SQS names an error both ways (``Code`` and ``QueryErrorCode``); either may be given.
PASSING = frozenset({
    "Throttling", "ThrottlingException", "RequestThrottled", "RequestThrottledException",
    "TooManyRequestsException", "KmsThrottled", "KMS.ThrottlingException",
    "OverLimit",  # the queue's limit of messages in flight, freed as consumers delete theirs
    "RequestTimeout", "RequestTimeoutException",
})

logger = names.get_logger("spectroflow.relay")


@dataclass(frozen=True)
class CreatedObject:
    """An object that a bucket notification says was created.

    Attributes
    ----------
    url : str
        ``s3://bucket/key``, the key URL-decoded.
    etag, sequencer : str
        The object's ETag and S3's ordering token for the key ("" where the store gives none).
    size : int or None
        Bytes.
    notified : str
        The notification's ``eventName`` and ``eventTime``, e.g. ``ObjectCreated:Put at ...``.
    """

    url: str
    etag: str
    sequencer: str
    size: int | None
    notified: str

    @property
    def event_id(self) -> uuid.UUID:
        """The same for every notification of this object version: S3 gives one sequencer per
        write of a key; stores without sequencers tell writes apart by ETag and time.

        >>> a = CreatedObject("s3://lab/a.wav", "e1", "0A1", 10, "ObjectCreated:Put at t1")
        >>> b = CreatedObject("s3://lab/a.wav", "e1", "0A1", 10, "ObjectCreated:Put at t2")
        >>> a.event_id == b.event_id
        True
        """
        version = self.sequencer or f"{self.etag} {self.notified}"
        return uuid.uuid5(uuid.NAMESPACE_URL, f"{self.url}#{version}")

    def event(self) -> Event:
        """The :data:`AUDIO_CREATED` event that announces it; it occurs when relayed."""
        bucket, _, key = self.url.removeprefix("s3://").partition("/")
        return Event(
            id=self.event_id, event=AUDIO_CREATED,
            resource=Resource({"prefect.resource.id": self.url, "prefect.resource.name": key}),
            payload={"bucket": bucket, "key": key, "size": self.size, "etag": self.etag,
                     "sequencer": self.sequencer, "notified": self.notified},
        )


def events(objects: list[CreatedObject], limit: int = BATCH_LIMIT) -> list[Event]:
    """The events that announce ``objects``: one :data:`AUDIO_CREATED` event each, then their
    :func:`batch_events`.

    >>> a = CreatedObject("s3://lab/a.wav", "e1", "0A1", 10, "ObjectCreated:Put at t1")
    >>> b = CreatedObject("s3://lab/b.wav", "e2", "0A2", 10, "ObjectCreated:Put at t2")
    >>> [(e.event, e.resource.id) for e in events([a, b])][1:]
    [('spectroflow.audio.created', 's3://lab/b.wav'), ('spectroflow.audio.batch', 's3://lab')]
    """
    return [obj.event() for obj in objects] + batch_events(objects, limit)


def batch_events(objects: list[CreatedObject], limit: int = BATCH_LIMIT) -> list[Event]:
    """One :data:`AUDIO_BATCH` event per bucket and ``limit`` of ``objects``, whose id is made
    from the ids of the objects it names (the same objects relayed again make the same batch
    event).

    >>> a = CreatedObject("s3://lab/a.wav", "e1", "0A1", 10, "ObjectCreated:Put at t1")
    >>> b = CreatedObject("s3://lab/b.wav", "e2", "0A2", 10, "ObjectCreated:Put at t2")
    >>> batch_events([a, b])[0].payload["objects"]
    ['s3://lab/a.wav', 's3://lab/b.wav']
    >>> c = CreatedObject("s3://lab/audio/day 1/c.wav", "e3", "0A3", 10, "ObjectCreated:Put at t3")
    >>> [r.id for r in batch_events([c])[0].related]
    ['s3://lab', 's3://lab/audio', 's3://lab/audio/day 1']
    """
    buckets: dict[str, list[CreatedObject]] = {}
    for obj in objects:
        buckets.setdefault(obj.url.removeprefix("s3://").partition("/")[0], []).append(obj)
    batches = []
    for bucket, in_bucket in buckets.items():
        for start in range(0, len(in_bucket), limit):
            named = in_bucket[start:start + limit]
            batch_id = uuid.uuid5(uuid.NAMESPACE_URL,
                                  "batch:" + ",".join(sorted(str(o.event_id) for o in named)))
            folders = dict.fromkeys(
                url[:end] for url in (o.url for o in named)
                for end in _slashes(url, start=len(f"s3://{bucket}")))
            batches.append(Event(
                id=batch_id, event=AUDIO_BATCH,
                resource=Resource({"prefect.resource.id": f"s3://{bucket}",
                                   "prefect.resource.name": bucket}),
                related=[RelatedResource({"prefect.resource.id": folder,
                                          "prefect.resource.role": "folder"})
                         for folder in folders],
                payload={"objects": [o.url for o in named], "count": len(named)},
            ))
    return batches


def _slashes(url: str, start: int) -> Iterator[int]:
    """Where the folders of an object's URL end: the bucket's, then each folder's below it."""
    yield start
    while (start := url.find("/", start + 1)) != -1:
        yield start


def created_objects(body: str) -> tuple[list[CreatedObject], list[str]]:
    """The objects created according to a queue message: an S3 event notification
    (``{"Records": [...]}``, as S3 sends it to SQS, or wrapped in an SNS notification).

    Records of other events (removals, restores, ...) and S3's ``s3:TestEvent`` give nothing.
    Keys are URL-decoded as S3 and MinIO encode them (``+`` for a space), except Ceph's
    (``"eventSource": "ceph:s3"``), which it sends as they are.

    Returns
    -------
    objects : list of CreatedObject
        One per record of a created object, in the message's order.
    rejected : list of str
        Why each record that could not be read was skipped, e.g. ``record 1 without 'object':
        {...}`` (records counted from 0); the others are kept all the same.

    Raises
    ------
    ValueError
        The body is not such a notification.

    Examples
    --------
    >>> body = json.dumps({"Records": [{
    ...     "eventName": "ObjectCreated:Put", "eventTime": "2026-11-24T08:09:14.000Z",
    ...     "s3": {"bucket": {"name": "lab"},
    ...            "object": {"key": "audio/bird+7/song%2B1.wav", "size": 8, "eTag": "e1"}}},
    ...     {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "lab"}}}]})
    >>> objects, rejected = created_objects(body)
    >>> [o.url for o in objects]
    ['s3://lab/audio/bird 7/song+1.wav']
    >>> rejected
    ["record 1 without 'object': {'eventName': 'ObjectCreated:Put', 's3': {'bucket': {'name': 'lab'}}}"]
    >>> created_objects('{"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "lab"}')
    ([], [])
    """
    try:
        message = json.loads(body)
        if isinstance(message, dict) and message.get("Type") == "Notification":
            message = json.loads(message["Message"])  # through SNS
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not JSON of an S3 event notification: {exc}") from exc
    if not isinstance(message, dict):
        raise ValueError(f"not an S3 event notification: a JSON {type(message).__name__}")
    if message.get("Event") == "s3:TestEvent":
        return [], []
    records = message.get("Records")
    if not isinstance(records, list):
        raise ValueError("not an S3 event notification: no list of Records, "
                         f"keys {sorted(message)}")
    found, rejected = [], []
    for i, record in enumerate(records):
        try:
            obj = _created_object(record)
        except ValueError as exc:
            rejected.append(f"record {i} {exc}: {record}")
            continue
        if obj is not None:
            found.append(obj)
    return found, rejected


def _created_object(record: Any) -> CreatedObject | None:
    """The object a notification's record says was created, None for another event; raises
    ValueError saying what is wrong with the record."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    try:
        # MinIO names its events s3:ObjectCreated:*, S3 ObjectCreated:*.
        name = str(record["eventName"]).removeprefix("s3:")
        if not name.startswith("ObjectCreated:"):
            return None
        bucket, obj = record["s3"]["bucket"]["name"], record["s3"]["object"]
        key = obj["key"]
    except KeyError as exc:
        raise ValueError(f"without {exc}") from exc
    except TypeError as exc:  # a list or a string where S3 puts an object
        raise ValueError(f"malformed ({exc})") from exc
    if not (isinstance(bucket, str) and isinstance(key, str)):
        raise ValueError("with a bucket name or key that is not a string")
    if record.get("eventSource") != "ceph:s3":
        key = unquote_plus(key)
    size = obj.get("size")
    return CreatedObject(
        url=f"s3://{bucket}/{key}", etag=str(obj.get("eTag", "")),
        sequencer=str(obj.get("sequencer", "")),
        size=int(size) if str(size).isdigit() else None,  # Ceph's documented example: "1024"
        notified=f"{name} at {record.get('eventTime', '')}")


def read_notification(body: str, source: str) -> tuple[list[CreatedObject], list[str]]:
    """:func:`created_objects`, each record that could not be read logged once, as a warning
    naming ``source`` (e.g. ``message 7f3a...``); a notification of no new object is logged too.

    Raises
    ------
    ValueError
        The body is not an S3 event notification; the caller says what becomes of it.
    """
    objects, rejected = created_objects(body)
    for reason in rejected:
        logger.warning("%s: dropped %s", source, reason)
    if not objects and not rejected:
        logger.info("%s announces no new object", source)
    return objects, rejected


class Accepted:
    """The ids of the last :data:`REMEMBERED` events that the Prefect API accepted, so that an
    object notified again (redelivered, retried by its sender, S3's duplicate) gives no second
    event.

    >>> accepted = Accepted()
    >>> a = CreatedObject("s3://lab/a.wav", "e1", "0A1", 10, "ObjectCreated:Put at t1")
    >>> [o.url for o in accepted.new([a, a])]
    ['s3://lab/a.wav']
    >>> accepted.add([a])
    >>> accepted.new([a])
    []
    """

    def __init__(self) -> None:
        self._ids: OrderedDict[uuid.UUID, None] = OrderedDict()

    def new(self, objects: Iterable[CreatedObject]) -> list[CreatedObject]:
        """Those of ``objects`` whose events were not accepted yet, each version once, in
        order; the others are logged as relayed already."""
        new: dict[uuid.UUID, CreatedObject] = {}
        for obj in objects:
            if obj.event_id in self._ids:
                logger.info("already relayed %s", obj.url)
            else:
                new[obj.event_id] = obj
        return list(new.values())

    def add(self, objects: Iterable[CreatedObject]) -> None:
        """Remember that the events of ``objects`` were accepted."""
        for obj in objects:
            self._ids[obj.event_id] = None
        while len(self._ids) > REMEMBERED:
            self._ids.popitem(last=False)


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the queue refusing a call for a reason that retrying does not change:
    a client error (HTTP 4xx) other than the :data:`PASSING` ones.

    >>> def answer(code: str, status: int) -> ClientError:
    ...     return ClientError({"Error": {"Code": code},
    ...                         "ResponseMetadata": {"HTTPStatusCode": status}}, "ReceiveMessage")
    >>> _refused(answer("AWS.SimpleQueueService.NonExistentQueue", 400))
    True
    >>> _refused(answer("RequestThrottled", 400)), _refused(answer("InternalError", 500))
    (False, False)
    """
    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    passing = {error.get("Code"), error.get("QueryErrorCode")} & PASSING
    return 400 <= status < 500 and status not in (408, 429) and not passing


def log_retry(what: str) -> Callable[[tenacity.RetryCallState], None]:
    """A tenacity ``before_sleep`` that logs ``what`` failed, the attempt and the wait."""
    def log(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None  # tenacity's, before a sleep
        exc = state.outcome.exception()
        logger.warning("%s failed (attempt %d), retrying in %.1f s: %s: %s", what,
                       state.attempt_number, state.next_action.sleep, type(exc).__name__, exc)

    return log


class Relay:
    """Moves bucket notifications from an SQS queue to Prefect events, a batch at a time.

    Parameters
    ----------
    queue_url : str
        The queue.
    sqs
        A boto3 SQS client.
    emit : callable
        Sends a list of events to Prefect; returns once the API accepted them, raises otherwise.
    wait : int
        Seconds a receive waits for messages (SQS's long polling, at most 20).
    window : float
        Seconds from the first message with a new object to the batch's events: the messages
        received meanwhile join the batch (up to :data:`BATCH_LIMIT` objects). Its messages are
        deleted once the events were accepted, so it must stay well below the queue's
        visibility timeout (30 s by default).
    first_retry, last_retry : float
        Seconds between attempts of a failing call: ``first_retry``, doubling up to ``last_retry``.
        Every call is attempted until it succeeds, or the queue refuses it for good.
    """

    def __init__(self, queue_url: str, sqs: Any, emit: Callable[[list[Event]], None],
                 wait: int = 20, window: float = WINDOW, first_retry: float = 0.5,
                 last_retry: float = 30.0):
        self.queue_url = queue_url
        self.wait = wait
        self.window = window
        self._sqs = sqs
        self._emit = emit
        self._accepted = Accepted()
        self._backoff = tenacity.wait_exponential(multiplier=first_retry, max=last_retry)

    def step(self) -> int:
        """Receive messages (waiting up to ``wait`` seconds for one, then for ``window`` seconds
        from the first with a new object), emit the events of their new objects (:func:`events`),
        then delete them; the number of messages handled.

        Raises
        ------
        ValueError
            The queue refused a call for a reason that retrying does not change (see
            :data:`PASSING`); what was received and not deleted returns to the queue.
        """
        messages = self._until_done("receiving from the queue", self._receive, self.wait)
        fresh: dict[uuid.UUID, tuple[CreatedObject, str]] = {}
        self._read(messages, fresh)
        deadline = time.monotonic() + self.window
        while fresh and len(fresh) < BATCH_LIMIT and (left := deadline - time.monotonic()) > 0:
            more = self._until_done("receiving from the queue", self._receive,
                                    min(20, max(1, round(left))))
            self._read(more, fresh)
            messages += more
        if fresh:
            self._until_done("emitting events to Prefect", self._emit,
                             events([obj for obj, _ in fresh.values()]))
            for obj, times in fresh.values():
                logger.info("relayed %s%s", obj.url, times)
            self._accepted.add(obj for obj, _ in fresh.values())
        if messages:
            self._until_done("deleting relayed messages from the queue", self._delete, messages)
        return len(messages)

    def _read(self, messages: list[dict], fresh: dict[uuid.UUID, tuple[CreatedObject, str]]) -> None:
        """Add the new objects of ``messages`` to ``fresh``, each with how often it was received."""
        for message in messages:
            source = f"message {message['MessageId']}"
            try:
                objects, _ = read_notification(message["Body"], source)
            except ValueError as exc:
                logger.warning("%s dropped: %s", source, exc)
                continue
            received = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
            for obj in self._accepted.new(objects):
                fresh[obj.event_id] = obj, f" (received {received} times)" if received > 1 else ""

    def _until_done(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)``, attempted until it raises no :data:`TRANSIENT` error; a refusal of
        the queue (:func:`_refused`) raises ValueError at once."""
        passes = tenacity.retry_if_exception(lambda e: isinstance(e, TRANSIENT) and not _refused(e))
        retrying = tenacity.Retrying(retry=passes, wait=self._backoff,
                                     before_sleep=log_retry(what), reraise=True)
        try:
            return retrying(call, *args)
        except ClientError as exc:
            if not _refused(exc):
                raise
            error = exc.response.get("Error", {})
            # One line: some servers put a whole XML error document in the message.
            reason = " ".join(f"{error.get('Code', '')}: {error.get('Message', exc)}".split())
            raise ValueError(f"{what} {self.queue_url} failed, and would fail again: "
                             f"{reason}") from exc

    def _receive(self, wait: int) -> list[dict]:
        answer = self._sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["ApproximateReceiveCount"])
        return answer.get("Messages", [])

    def _delete(self, messages: list[dict]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        answer = self._sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        for failed in answer.get("Failed", []):
            # Back on the queue after its visibility timeout, then skipped as relayed already.
            logger.warning("message %s not deleted: %s", messages[int(failed["Id"])]["MessageId"],
                           failed.get("Message", failed.get("Code")))


def post_events(client: Any, events: list[Event]) -> None:
    """Send ``events`` to the API of a Prefect client; raises unless the server accepted them."""
    client.request("POST", "/events", json=[e.model_dump(mode="json") for e in events])


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM stops the relay as Ctrl-C does, raising KeyboardInterrupt: the
    queue's route may stop at any point, since a message is deleted only after its events were
    accepted; the HTTP route's server stops gracefully first, and raises the signal after."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextmanager
def log_to_stderr() -> Iterator[None]:
    """Within the block, the relay's records at INFO and above go to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def prefect_api() -> str:
    """The Prefect API that events go to (``PREFECT_API_URL``).

    Raises
    ------
    ValueError
        It is not set: events would go to a temporary API that nothing listens to.
    """
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise ValueError("set PREFECT_API_URL to the Prefect server's API, e.g. "
                         "http://127.0.0.1:4200/api")
    return api


@contextmanager
def posting_events() -> Iterator[Callable[[list[Event]], None]]:
    """Within the block, a function that sends events to the Prefect API: it returns once the
    API accepted them, and raises otherwise, at once (the relay's retries, or the sender's,
    replace the client's silent ones). It may be called from several threads."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}), \
            get_client(sync_client=True) as client:
        yield lambda events: post_events(client, events)


def run(queue_url: str, wait: int = 20, window: float = WINDOW) -> None:
    """Relay notifications from the queue at ``queue_url`` until SIGTERM or Ctrl-C.

    The queue is reached as boto3 finds it from the environment (``AWS_ENDPOINT_URL_SQS`` or
    ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, credentials), the Prefect API at
    ``PREFECT_API_URL``. Failing calls are retried until they succeed, each failure logged,
    unless the queue refuses them for good.

    Raises
    ------
    ValueError
        No Prefect API or no AWS region is configured, or the queue refused the relay for a
        reason that retrying does not change (no such queue, access denied, unknown keys, ...).
    """
    import boto3
    from botocore.exceptions import NoRegionError

    api = prefect_api()
    try:
        sqs = boto3.client("sqs")
    except NoRegionError as exc:
        raise ValueError("set AWS_DEFAULT_REGION to the queue's region") from exc
    with log_to_stderr(), posting_events() as emit:
        relay = Relay(queue_url, sqs, emit, wait, window)
        logger.info("relaying %s to %s as %s events, and %s events of what %g s bring",
                    queue_url, api, AUDIO_CREATED, AUDIO_BATCH, window)
        try:
            with sigterm_interrupts():
                while True:
                    relay.step()
        except KeyboardInterrupt:
            logger.info("stopped; unrelayed messages stay on the queue")
