"""``spectroflow relay --listen``: notifications POSTed over HTTP, relayed to a real ``prefect
server`` as events, all on 127.0.0.1.

The payloads in tests/data/notifications/ are in the formats the stores send: MinIO's webhook
target (internal/event/target/webhook.go: ``EventName`` and ``Key`` beside ``Records``, one
record per POST, the key URL-encoded) and Ceph RGW's HTTP push endpoint (rgw_pubsub.cc's
``rgw_pubsub_s3_event::dump``: ``eventVersion`` 2.2, ``eventSource`` ceph:s3, the key as it is).
The relay reaches the server through a fault proxy, which counts its requests and fails them
on demand.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spectroflow.orchestration.relay import AUDIO_BATCH, AUDIO_CREATED, created_objects

from conftest import OutputLines, free_port, prefect_server, wait_for
from faultproxy import FaultProxy

NOTIFICATIONS = Path(__file__).parent / "data" / "notifications"
TOKEN = "a-token-of-the-lab"
MAX_BODY = 100_000
KEY = "audio/day 1/bird+7 song.wav"  # the object both recorded notifications announce


def recorded(name: str, bucket: str, event_name: str | None = None) -> bytes:
    """The body of a recorded notification, about the same object in ``bucket``, and of
    another event if ``event_name`` is given."""
    body = json.loads((NOTIFICATIONS / f"{name}.json").read_text())
    for record in body["Records"]:
        record["s3"]["bucket"]["name"] = bucket
        record["s3"]["bucket"]["arn"] = record["s3"]["bucket"]["arn"].replace("lab-bucket", bucket)
        if event_name is not None:
            record["eventName"] = event_name
    if "Key" in body:  # MinIO's
        body["Key"] = body["Key"].replace("lab-bucket", bucket)
        body["EventName"] = event_name or body["EventName"]
    return json.dumps(body).encode()


def new_bucket() -> str:
    return f"lab-{uuid.uuid4().hex[:8]}"


def expected_id(bucket: str, sequencer: str) -> uuid.UUID:
    """The event's id, as the SQS route makes it: from the object's URL and S3's sequencer."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"s3://{bucket}/{KEY}#{sequencer}")


def stored_events(name: str, **resource: list[str]) -> list:
    """The ``name`` events the server has stored whose resource matches ``resource`` (the
    arguments of Prefect's ``EventResourceFilter``)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(event=EventNameFilter(name=[name]),
                                              resource=EventResourceFilter(**resource)), limit=50)
    return list(page.events)


def events_in_prefect(bucket: str) -> list:
    """The :data:`AUDIO_CREATED` events the server has stored for objects of ``bucket``."""
    return stored_events(AUDIO_CREATED, id_prefix=[f"s3://{bucket}/"])


def start_relay(api: str, home: Path, *args: str, token: str | None = TOKEN
                ) -> tuple[subprocess.Popen, OutputLines, str]:
    """``spectroflow relay --listen 127.0.0.1:PORT`` sending to ``api``; returns the process,
    its output and its URL once it listens."""
    port = free_port()
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home)}
    env.pop("SPECTROFLOW_RELAY_TOKEN", None)
    if token is not None:
        env["SPECTROFLOW_RELAY_TOKEN"] = token
    # A short window unless a test gives its own: each notification is answered after it.
    window = [] if "--window" in args else ["--window", "0.2"]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "spectroflow"), "relay", "--listen",
                             f"127.0.0.1:{port}", *window, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = OutputLines(proc.stdout)
    if not lines.wait_for(lambda line: "listening on" in line, 60):
        proc.kill()
        pytest.fail(f"the relay did not start:\n{lines.text()}")
    return proc, lines, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """A ``prefect server`` that stores events within half a second; yields its API's URL."""
    folder = tmp_path_factory.mktemp("server")
    with prefect_server(folder, PREFECT_SERVER_UI_ENABLED="false",
                        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL="0.5") as (base, _):
        yield f"{base}/api"


@pytest.fixture(scope="module")
def relay(server, tmp_path_factory) -> Iterator[tuple[str, FaultProxy, OutputLines]]:
    """One relay for the module's tests, reaching the server through a fault proxy; yields its
    URL, the proxy and its output."""
    with FaultProxy(server.removesuffix("/api")) as proxy:
        proc, lines, url = start_relay(f"{proxy.url}/api", tmp_path_factory.mktemp("relay"),
                                       "--max-body", str(MAX_BODY))
        try:
            yield url, proxy, lines
        finally:
            stop(proc)
            assert "Traceback" not in lines.text(), lines.text()


@pytest.fixture
def proxy(relay) -> Iterator[FaultProxy]:
    """The relay's proxy, once the batch events of earlier tests' notifications (sent 0.2 s
    behind them) have passed through it; its faults cleared after the test."""
    proxy = relay[1]
    while True:
        seen = proxy.requests
        time.sleep(0.5)
        if proxy.requests == seen:
            break
    yield proxy
    proxy.always.clear()


def post(url: str, body: bytes, token: str | None = TOKEN, **kwargs) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(url, content=body, headers=headers, timeout=30, **kwargs)


def test_minio_and_ceph_notifications_become_events_with_the_queues_ids(relay):
    url, _, _ = relay
    bucket = new_bucket()
    minio, ceph = recorded("minio-put", bucket), recorded("ceph-put", bucket)
    # MinIO's auth_token as a bearer token; Ceph's secret as a push endpoint's user:password@.
    assert post(url, minio).status_code == 200
    with_password = url.replace("http://", f"http://spectroflow:{TOKEN}@")
    answer = httpx.post(with_password, content=ceph, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"objects": 1, "relayed": 1, "dropped": 0}

    wait_for(lambda: len(events_in_prefect(bucket)) == 2, 30, "the two events")
    events = events_in_prefect(bucket)
    # The same object, written twice: MinIO's key was URL-encoded, Ceph's was not.
    assert {e.resource.id for e in events} == {f"s3://{bucket}/{KEY}"}
    assert {e.id for e in events} == {expected_id(bucket, "187AC1B3C6F3E0A8"),
                                      expected_id(bucket, "6AE3C167D4E25B07")}
    assert {e.id for e in events} == {created_objects(b.decode())[0][0].event_id for b in (minio, ceph)}
    assert all(e.event == AUDIO_CREATED and e.payload["size"] == 16428 for e in events)


def test_a_notification_sent_twice_is_one_event(relay):
    url, proxy, lines = relay
    bucket = new_bucket()
    body = recorded("minio-put", bucket)
    before = proxy.requests
    assert post(url, body).json()["relayed"] == 1
    assert post(url, body).json() == {"objects": 1, "relayed": 0, "dropped": 0}
    assert proxy.requests == before + 1, "one POST to the Prefect API"
    assert lines.wait_for(lambda line: f"already relayed s3://{bucket}/" in line, 5)
    wait_for(lambda: events_in_prefect(bucket), 30, "the event")
    assert [e.id for e in events_in_prefect(bucket)] == [expected_id(bucket, "187AC1B3C6F3E0A8")]


def test_senders_without_the_token_are_refused(relay, proxy):
    url, _, _ = relay
    bucket = new_bucket()
    body = recorded("ceph-put", bucket)
    before = proxy.requests
    refused = [post(url, body, token=None), post(url, body, token="a-guess"),
               post(url, body, token=None, auth=("spectroflow", "a-guess")),
               httpx.post(url, content=body, headers={"Authorization": f"Token {TOKEN}"})]
    assert [r.status_code for r in refused] == [401] * 4
    assert "SPECTROFLOW_RELAY_TOKEN" in refused[0].text
    assert refused[0].headers["WWW-Authenticate"].startswith("Bearer")
    assert proxy.requests == before, "nothing sent to Prefect"
    assert post(url, body).status_code == 200


def test_only_posts_are_notifications_and_health_answers(relay):
    url, _, _ = relay
    assert httpx.get(f"{url}/health").status_code == 200
    answer = httpx.get(url)
    assert answer.status_code == 405 and answer.headers["Allow"] == "POST"
    assert httpx.put(url, content=b"{}", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405


def exchange(url: str, head: str, body: bytes = b"") -> bytes:
    """What the relay answers to the raw request ``head`` + ``body``, until it closes."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_body_over_the_limit_is_refused_unread(relay, proxy):
    url, _, _ = relay
    before = proxy.requests
    auth = f"Authorization: Bearer {TOKEN}"
    # Told by its length: answered before any of the body is sent.
    answer = exchange(url, f"POST / HTTP/1.1\nHost: relay\n{auth}\nContent-Length: {MAX_BODY + 1}\n")
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    # Chunked, length untold: answered once the bytes pass the limit, the body's end never sent.
    chunk = b"%x\r\n%s" % (MAX_BODY + 1, b" " * (MAX_BODY + 1))
    answer = exchange(url, f"POST / HTTP/1.1\nHost: relay\n{auth}\nTransfer-Encoding: chunked\n",
                      chunk)
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert proxy.requests == before
    assert post(url, b" " * (MAX_BODY - 2) + b"{}").status_code == 400, "at the limit: read"


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"Records": [{"eventName": "ObjectCreated:Put"', "not JSON of an S3 event notification"),
    (b'{"detail-type": "Object Created"}', "no list of Records"),
    (b'\xff{"Records": []}', "can't decode byte 0xff"),
    (b'{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "lab"}}}]}',
     "no record could be read: record 0 without 'object'"),
])
def test_a_body_that_is_not_a_notification_is_refused_saying_why(relay, proxy, body, reason):
    url, _, _ = relay
    before = proxy.requests
    answer = post(url, body)
    assert answer.status_code == 400 and reason in answer.text, answer.text
    assert proxy.requests == before


def test_test_events_and_removals_are_acknowledged_without_events(relay, proxy):
    url, _, lines = relay
    bucket = new_bucket()
    s3_test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-11-24T08:09:14Z",
                                "Bucket": bucket, "RequestId": "5582815E1AEA5ADF", "HostId": "8cLeGAmw098X5cv4Zkw"})
    before = proxy.requests
    for body in (s3_test_event.encode(), recorded("ceph-put", bucket, "ObjectRemoved:Delete"),
                 recorded("minio-put", bucket, "s3:ObjectRemoved:Delete")):
        answer = post(url, body)
        assert answer.status_code == 200 and answer.json()["relayed"] == 0, answer.text
    assert proxy.requests == before
    assert lines.wait_for(lambda line: "announces no new object" in line, 5)
    assert post(url, recorded("ceph-put", bucket)).json()["relayed"] == 1
    events = wait_for(lambda: events_in_prefect(bucket), 30, "the one event")
    assert len(events) == 1


@pytest.mark.parametrize("fault", ["503", "reset"])
def test_a_failing_api_is_answered_503_and_the_senders_retry_succeeds(relay, proxy, fault):
    url, _, lines = relay
    bucket = new_bucket()
    body = recorded("minio-put", bucket)
    proxy.fail_always("POST", r"/api/events$", fault)
    answer = post(url, body)
    assert answer.status_code == 503 and answer.headers["Retry-After"].isdigit(), answer.text
    assert proxy.injected[fault] >= 1
    assert lines.wait_for(lambda line: "emitting events to Prefect failed, answered 503" in line, 5)

    proxy.always.clear()
    assert post(url, body).json()["relayed"] == 1, "not remembered as relayed when refused"
    events = wait_for(lambda: events_in_prefect(bucket), 30, "the event, on the retry")
    assert [e.id for e in events] == [expected_id(bucket, "187AC1B3C6F3E0A8")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_relay_after_the_request_in_progress(server, tmp_path, signum):
    """A request whose body the relay waits for (it has answered ``100 Continue``, as curl,
    Ceph's client, asks), then the signal: the relay stops listening, answers that request once
    its body arrives, relays its event, and exits 0."""
    proc, lines, url = start_relay(server, tmp_path)
    try:
        bucket = new_bucket()
        body = recorded("ceph-put", bucket)
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"POST / HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {TOKEN}\r\n"
                         f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 100 ")

            def refused() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                except ConnectionRefusedError:
                    return True
                return False

            proc.send_signal(signum)
            wait_for(refused, 30, "the relay to stop listening")
            sock.sendall(body)
            answer = sock.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert proc.wait(30) == 0, lines.text()
        assert lines.wait_for(lambda line: "stopped" in line, 5), lines.text()
        assert "Traceback" not in lines.text(), lines.text()
        assert [e.resource.id for e in wait_for(lambda: events_in_prefect(bucket), 30, "the event")] == \
            [f"s3://{bucket}/{KEY}"]
    finally:
        stop(proc)


def run_command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "spectroflow"), "relay", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_the_command_needs_a_token_to_listen_beyond_loopback(tmp_path):
    env = {"PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_HOME": str(tmp_path),
           "SPECTROFLOW_RELAY_TOKEN": ""}
    result = run_command("--listen", f"0.0.0.0:{free_port()}", env=env)
    assert result.returncode == 2, result.stderr
    assert "error: set SPECTROFLOW_RELAY_TOKEN to listen on 0.0.0.0" in result.stderr
    for args, reason in [(["--listen", "127.0.0.1"], "--listen takes HOST:PORT"),
                         (["--listen", "127.0.0.1:1", "--queue-url", "http://127.0.0.1:9/q"],
                          "give either --queue-url or --listen"),
                         ([], "give either --queue-url or --listen")]:
        result = run_command(*args, env=env)
        assert result.returncode == 2 and f"error: {reason}" in result.stderr, result.stderr


def test_notifications_within_the_window_make_one_batch_and_are_answered_at_once(server, tmp_path):
    """Three notifications sent one after another, as MinIO's queue sends them, within a window
    of 2 s: each is answered as soon as its event was accepted, and one batch event names all
    three; a batch still open when the relay is stopped is sent before it exits."""
    def batches(bucket: str) -> list:
        return stored_events(AUDIO_BATCH, id=[f"s3://{bucket}"])

    def bodies(bucket: str) -> list[bytes]:
        return [recorded("minio-put", bucket).replace(b"187AC1B3C6F3E0A8", f"SEQ{i}".encode())
                for i in range(3)]

    proc, _, url = start_relay(server, tmp_path, "--window", "2")
    try:
        bucket = new_bucket()
        start = time.monotonic()
        answers = [post(url, body) for body in bodies(bucket)]
        assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
        assert time.monotonic() - start < 1.5, "answered without waiting for the window"
        wait_for(lambda: batches(bucket), 30, "the batch event")
        (batch,) = batches(bucket)
        assert batch.payload["objects"] == [f"s3://{bucket}/{KEY}"] * 3, "three writes of a key"
        assert {r.id for r in batch.related} == {f"s3://{bucket}", f"s3://{bucket}/audio",
                                                 f"s3://{bucket}/audio/day 1"}
    finally:
        stop(proc)

    proc, _, url = start_relay(server, tmp_path, "--window", "600")
    try:
        bucket = new_bucket()
        assert [post(url, body).status_code for body in bodies(bucket)] == [200] * 3
    finally:
        stop(proc)
    assert proc.returncode == 0
    wait_for(lambda: batches(bucket), 30, "the batch sent at shutdown")
    assert len(batches(bucket)[0].payload["objects"]) == 3
