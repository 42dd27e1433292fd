"""The relay from bucket notifications to Prefect events, and the ingest runs its batches start.

The messages' parsing alone; the relay on a real SQS queue (moto's server); then the whole path
on 127.0.0.1: uploads to moto's S3, its notifications to its SQS queue, ``spectroflow relay``,
a real ``prefect server``, and ``deployments/serve.py`` running the ingest runs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest
import soundfile

from spectroflow.orchestration.relay import AUDIO_BATCH, AUDIO_CREATED, Relay, created_objects

from conftest import OutputLines, moto_server_checking_credentials, prefect_server, wait_for
from faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parents[1]
NEVER = "0 3 1 1 *"  # once a year: schedules exist, but fire in no test


def notification(*records: tuple[str, str, str], sequencer: str = "") -> str:
    """An S3 event notification's JSON, a record per (event name, bucket, encoded key)."""
    return json.dumps({"Records": [
        {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": name,
         "eventTime": "2026-11-24T08:09:14.123Z",
         "s3": {"bucket": {"name": bucket},
                "object": {"key": key, "size": 8, "eTag": "9dd4e461", "sequencer": sequencer}}}
        for name, bucket, key in records]})


def test_keys_are_decoded_as_s3_encodes_them():
    body = notification(("ObjectCreated:Put", "lab", "audio/day+1/bird%2B7+song.wav"),
                        ("ObjectCreated:CompleteMultipartUpload", "lab", "audio%2Fd%2F%C3%A9t%C3%A9.wav"),
                        ("s3:ObjectCreated:Put", "lab", "audio/minio.wav"))  # MinIO's event names
    objects, rejected = created_objects(body)
    assert [o.url for o in objects] == [
        "s3://lab/audio/day 1/bird+7 song.wav", "s3://lab/audio/d/été.wav", "s3://lab/audio/minio.wav"]
    assert rejected == []
    event = objects[0].event()
    assert event.event == AUDIO_CREATED
    assert event.resource.id == "s3://lab/audio/day 1/bird+7 song.wav"
    assert event.payload["key"] == "audio/day 1/bird+7 song.wav"


def test_ceph_keys_are_taken_as_sent():
    """Ceph RGW does not encode keys (rgw_notify.cc copies the object's name), S3 and MinIO do;
    Ceph's documented example gives the size as a string."""
    record = json.loads(notification(("ObjectCreated:Put", "lab", "audio/day 1/bird+7 song%2B.wav")))
    record["Records"][0]["eventSource"] = "ceph:s3"
    record["Records"][0]["s3"]["object"]["size"] = "1024"
    (obj,), rejected = created_objects(json.dumps(record))
    assert obj.url == "s3://lab/audio/day 1/bird+7 song%2B.wav" and rejected == []
    assert obj.size == 1024


def test_the_test_event_and_other_events_announce_no_object():
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-11-24T08:09:14Z",
                  "Bucket": "lab", "RequestId": "5582815E1AEA5ADF", "HostId": "8cLeGAmw098X5cv4Zkw"}
    assert created_objects(json.dumps(test_event)) == ([], [])
    body = notification(("ObjectRemoved:Delete", "lab", "audio/a.wav"),
                        ("ObjectRestore:Completed", "lab", "audio/b.wav"),
                        ("ObjectCreated:Copy", "lab", "audio/c.wav"))
    assert [o.url for o in created_objects(body)[0]] == ["s3://lab/audio/c.wav"]


def test_notifications_through_sns_are_unwrapped():
    inner = notification(("ObjectCreated:Put", "lab", "audio/a+b.wav"))
    body = json.dumps({"Type": "Notification", "MessageId": "1", "TopicArn": "arn:aws:sns:x",
                       "Message": inner})
    assert [o.url for o in created_objects(body)[0]] == ["s3://lab/audio/a b.wav"]


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '{"Type": "Notification"}',
                                  '{"Records": "none"}', '{"detail-type": "Object Created"}'])
def test_other_messages_are_not_notifications(body):
    with pytest.raises(ValueError, match="S3 event"):
        created_objects(body)


def test_a_bad_record_is_rejected_alone_with_its_reason():
    good = json.loads(notification(("ObjectCreated:Put", "lab", "audio/a.wav"),
                                   ("ObjectCreated:Put", "lab", "audio/b.wav")))["Records"]
    bad = [{"eventName": "ObjectCreated:Put"},
           {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "lab"}, "object": {"key": 7}}},
           "ObjectCreated:Put"]
    objects, rejected = created_objects(json.dumps({"Records": [good[0], *bad, good[1]]}))
    assert [o.url for o in objects] == ["s3://lab/audio/a.wav", "s3://lab/audio/b.wav"]
    assert len(rejected) == 3
    assert rejected[0].startswith("record 1 without 's3': ")
    assert rejected[1].startswith("record 2 with a bucket name or key that is not a string: ")
    assert rejected[2].startswith("record 3 not a JSON object: ")


def test_duplicate_notifications_of_one_write_are_one_event():
    def event_id(key: str, sequencer: str, bucket: str = "lab", time: str = "t1") -> uuid.UUID:
        body = notification(("ObjectCreated:Put", bucket, key), sequencer=sequencer)
        return created_objects(body.replace("2026-11-24T08:09:14.123Z", time))[0][0].event_id

    first = event_id("audio/a.wav", "0055AED6DCD90281E5")
    assert event_id("audio/a.wav", "0055AED6DCD90281E5", time="t2") == first, "S3's duplicate"
    assert event_id("audio/a.wav", "0055AED6DCD90281E6") != first, "the key written again"
    assert event_id("audio/a.wav", "0055AED6DCD90281E5", bucket="lab2") != first
    assert event_id("audio/a+b.wav", "") == event_id("audio/a+b.wav", "")
    assert event_id("audio/a+b.wav", "") != event_id("audio/a+b.wav", "", time="t2"), \
        "without sequencers, writes of the same content apart in time are distinct"


def queue_counts(sqs, queue: str) -> tuple[int, int]:
    """Messages waiting on ``queue``, and messages received but not deleted."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return (int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]))


def test_a_message_leaves_the_queue_only_after_prefect_accepted_its_events(s3_endpoint, caplog):
    """On moto's SQS, with Prefect's API standing in: it refuses twice, then accepts."""
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName=f"relay-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    created = notification(("ObjectCreated:Put", "lab", "audio/a+b.wav"), sequencer="0A")
    for body in (created, created, '{"Service": "Amazon S3", "Event": "s3:TestEvent"}', "junk"):
        sqs.send_message(QueueUrl=queue, MessageBody=body)
    attempts: list[tuple[list, tuple[int, int]]] = []

    def emit(events):
        attempts.append(([e.resource.id for e in events], queue_counts(sqs, queue)))
        if len(attempts) <= 2:
            raise httpx.ConnectError("API unreachable")

    caplog.set_level(logging.INFO, logger="spectroflow.relay")
    relay = Relay(queue, sqs, emit, wait=1, window=0, first_retry=0.01)
    assert relay.step() == 4
    # Each attempt while all four messages were received and none deleted; the copy is one event,
    # and its batch's event names the bucket.
    assert attempts == [(["s3://lab/audio/a b.wav", "s3://lab"], (0, 4))] * 3
    assert queue_counts(sqs, queue) == (0, 0)
    assert "emitting events to Prefect failed (attempt 2)" in caplog.text
    assert "dropped: not JSON" in caplog.text

    # Notified again (S3's duplicate, or redelivered): deleted without a second event.
    sqs.send_message(QueueUrl=queue, MessageBody=created)
    assert relay.step() == 1
    assert len(attempts) == 3 and queue_counts(sqs, queue) == (0, 0)
    assert "already relayed s3://lab/audio/a b.wav" in caplog.text


def test_a_bad_record_does_not_lose_the_good_ones_of_its_message(s3_endpoint, caplog):
    """The good record is relayed, the bad one logged once with its reason, the message deleted."""
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName=f"relay-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    good = json.loads(notification(("ObjectCreated:Put", "lab", "audio/good.wav"), sequencer="0B"))
    bad = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "lab"}}}
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"Records": [*good["Records"], bad]}))
    emitted: list = []

    caplog.set_level(logging.INFO, logger="spectroflow.relay")
    relay = Relay(queue, sqs, emitted.extend, wait=1, window=0)
    assert relay.step() == 1
    assert [e.resource.id for e in emitted if e.event == AUDIO_CREATED] == ["s3://lab/audio/good.wav"]
    assert queue_counts(sqs, queue) == (0, 0)
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and "dropped record 1 without 'object'" in dropped[0], dropped


def test_notifications_of_a_few_seconds_make_one_batch(s3_endpoint):
    """What arrives within ``window`` seconds of the first new object is one batch: its objects'
    events and one batch event naming them all, and its messages deleted after them."""
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName=f"relay-{uuid.uuid4().hex[:8]}")["QueueUrl"]

    def send(key: str, sequencer: str) -> None:
        sqs.send_message(QueueUrl=queue, MessageBody=notification(
            ("ObjectCreated:Put", "lab", key), sequencer=sequencer))

    emitted: list[list] = []
    send("audio/a.wav", "0A")
    relay = Relay(queue, sqs, emitted.append, wait=1, window=3)
    later = threading.Timer(1.0, lambda: [send("audio/day 2/b.wav", "0B"), send("c.wav", "0C")])
    later.start()
    try:
        assert relay.step() == 3
    finally:
        later.join()
    (posted,) = emitted
    assert [e.event for e in posted] == [AUDIO_CREATED] * 3 + [AUDIO_BATCH]
    batch = posted[-1]
    assert batch.payload["objects"] == ["s3://lab/audio/a.wav", "s3://lab/audio/day 2/b.wav",
                                        "s3://lab/c.wav"]
    assert [r.id for r in batch.related] == ["s3://lab", "s3://lab/audio", "s3://lab/audio/day 2"]
    assert queue_counts(sqs, queue) == (0, 0)


def test_queue_faults_that_clear_are_waited_out(s3_endpoint, caplog):
    """503s and a reset connection on the way to the queue: retried until the queue answers."""
    from botocore.config import Config

    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName=f"relay-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody=notification(("ObjectCreated:Put", "lab", "a.wav")))
    caplog.set_level(logging.INFO, logger="spectroflow.relay")
    with FaultProxy(s3_endpoint) as proxy:
        proxy.fail_times("POST", "^/", 2, "503")
        proxy.fail_times("POST", "^/", 1, "reset")
        # No retries of botocore's own: each fault reaches the relay.
        flaky = boto3.client("sqs", endpoint_url=proxy.url, config=Config(retries={"total_max_attempts": 1}))
        emitted: list = []
        assert Relay(queue, flaky, emitted.extend, wait=1, window=0, first_retry=0.01).step() == 1
    assert proxy.injected == {"503": 2, "reset": 1}
    assert [e.resource.id for e in emitted if e.event == AUDIO_CREATED] == ["s3://lab/a.wav"]
    assert "receiving from the queue failed (attempt 2)" in caplog.text


def run_relay(queue: str, env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """``spectroflow relay --queue-url queue``, its environment ``env`` over this one's, until
    it exits (60 s at most). Prefect's API is never reached: each test's relay fails first."""
    env = {**os.environ, **env, "PREFECT_API_URL": "http://127.0.0.1:9/api",
           "PREFECT_HOME": str(tmp_path / "prefect-home")}
    return subprocess.run([str(Path(sys.executable).parent / "spectroflow"), "relay",
                           "--queue-url", queue, "--wait", "1"],
                          env=env, capture_output=True, text=True, timeout=60)


def assert_failed_at_once(result: subprocess.CompletedProcess, queue: str, reason: str) -> None:
    """Exit 2 with one line naming the queue and the reason, after no retry."""
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and queue in errors[0] and reason in errors[0], result.stderr
    assert "retrying" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_missing_queue_fails_the_command_at_once(s3_endpoint, tmp_path):
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName=f"relay-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    sqs.delete_queue(QueueUrl=queue)
    assert_failed_at_once(run_relay(queue, {}, tmp_path), queue,
                          "AWS.SimpleQueueService.NonExistentQueue")


@pytest.fixture
def guarded_queue() -> Iterator[tuple[str, dict[str, dict]]]:
    """A queue on a moto server that checks credentials; yields its URL and, by the error the
    server answers, the environments of relays it refuses: keys it does not know, and a user
    that may not use SQS. (moto answers them as XML to the JSON client: code "403", the
    error's own code in its message.)"""
    with moto_server_checking_credentials(unchecked=4) as endpoint:
        bootstrap = {"endpoint_url": endpoint, "aws_access_key_id": "bootstrap",
                     "aws_secret_access_key": "bootstrap"}
        iam = boto3.client("iam", **bootstrap)
        iam.create_user(UserName="lab")
        key = iam.create_access_key(UserName="lab")["AccessKey"]
        iam.put_user_policy(UserName="lab", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        queue = boto3.client("sqs", **bootstrap).create_queue(QueueName="lab-audio")["QueueUrl"]
        yield queue, {
            "InvalidClientTokenId": {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "AKIAUNKNOWN0000000000",
                                     "AWS_SECRET_ACCESS_KEY": "not-a-key"},
            "AccessDenied": {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                             "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]},
        }


def test_refused_credentials_fail_the_command_at_once(guarded_queue, tmp_path):
    queue, relays = guarded_queue
    for reason, env in relays.items():
        assert_failed_at_once(run_relay(queue, env, tmp_path), queue, reason)


def test_the_command_needs_a_prefect_api():
    """Without PREFECT_API_URL, events would go to a temporary API that nothing listens to."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from spectroflow.cli import app

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(app, ["relay", "--queue-url", "http://127.0.0.1:9/q"])
    assert result.exit_code == 2, result.output
    assert "set PREFECT_API_URL" in result.output


@pytest.fixture
def server(tmp_path_factory):
    """``prefect server start`` with its trigger services; yields the API URL and the child env.

    A run that finds its deployment's one slot taken is due again a second later, not 30 s."""
    with prefect_server(tmp_path_factory.mktemp("server"), PREFECT_SERVER_UI_ENABLED="false",
                        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="1") as (base, env):
        yield f"{base}/api", env


def tiny_wav(seed: int) -> bytes:
    """A quarter of a second of noise at 8 kHz."""
    buffer = io.BytesIO()
    samples = np.random.default_rng(seed).uniform(-0.5, 0.5, 2048)
    soundfile.write(buffer, samples, 8000, format="WAV")
    return buffer.getvalue()


def start(args: list[str], env: dict) -> tuple[subprocess.Popen, OutputLines]:
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, OutputLines(proc.stdout)


@pytest.mark.slow
def test_a_burst_of_uploads_is_relayed_and_computed_by_few_runs(server, s3):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events.filters import EventFilter, EventNameFilter

    api, env = server
    fs, bucket = s3
    env = {**env, "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]}
    sqs, s3_client = boto3.client("sqs"), boto3.client("s3")
    # A short visibility timeout: what a killed relay had received comes back soon.
    queue = sqs.create_queue(QueueName=f"audio-{bucket}", Attributes={"VisibilityTimeout": "3"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3_client.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"], "Filter": {"Key": {
            "FilterRules": [{"Name": "prefix", "Value": "audio/"}, {"Name": "suffix", "Value": ".wav"}]}}}]})
    keys = [f"audio/day {i % 3}/bird+{i:02d} call.wav" for i in range(40)]
    strays = ["other/bird+00 call.wav", "audio/day 0/notes.txt"]
    source, destination = f"s3://{bucket}/audio", f"s3://{bucket}/spect"

    # serve asks for due runs every second, not every 10.
    serve, served = start([sys.executable, "deployments/serve.py", "--source", source,
                           "--destination", destination, "--nightly-cron", NEVER,
                           "--ingest-cron", NEVER],
                          {**env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"})
    relays: list[subprocess.Popen] = []
    relay_command = [str(Path(sys.executable).parent / "spectroflow"), "relay", "--queue-url", queue,
                     "--wait", "1", "--window", "2"]
    try:
        assert served.wait_for(lambda line: "deployments are being served" in line, 120), served.text()
        with FaultProxy(api.removesuffix("/api")) as proxy:
            relay_env = {**env, "PREFECT_API_URL": f"{proxy.url}/api"}
            first, first_lines = start(relay_command, relay_env)
            relays.append(first)
            assert first_lines.wait_for(lambda line: "announces no new object" in line, 60), \
                first_lines.text()  # S3's test event, sent when the configuration was set

            for key in keys[:15]:
                fs.pipe(f"{bucket}/{key}", tiny_wav(len(key)))
            relayed_line = first_lines.wait_for(lambda line: "relayed s3://" in line, 30)
            assert relayed_line, first_lines.text()
            # The relay's log time, local: the first event was accepted by then.
            first_relayed = datetime.strptime(relayed_line[:23], "%Y-%m-%d %H:%M:%S,%f").astimezone(UTC)
            # The API refuses events: the relay holds what it received, and is killed so.
            proxy.fail_always("POST", r"/api/events$", "503")
            for key in keys[15:25]:
                fs.pipe(f"{bucket}/{key}", tiny_wav(len(key)))
            assert first_lines.wait_for(lambda line: "emitting events to Prefect failed" in line, 30), \
                first_lines.text()
            first.send_signal(signal.SIGKILL)
            first.wait(10)

            # The API back, but dropping the next two connections; the rest uploaded meanwhile.
            proxy.always.clear()
            proxy.fail_times("POST", r"/api/events$", 2, "reset")
            for key in [*keys[25:], *strays]:
                fs.pipe(f"{bucket}/{key}", tiny_wav(len(key)))
            second, second_lines = start(relay_command, relay_env)
            relays.append(second)

            urls = sorted(f"s3://{bucket}/{key}" for key in keys)
            with get_client(sync_client=True) as client:
                def relayed() -> list[str]:
                    page = client.read_events(EventFilter(event=EventNameFilter(name=[AUDIO_CREATED])),
                                              limit=50)
                    events = list(page.events)
                    while page.next_page:
                        page = client.read_events_page(str(page.next_page))
                        events += page.events
                    return sorted(e.resource.id for e in events)

                wait_for(lambda: set(relayed()) == set(urls), 60, "the 40 events")
                assert relayed() == urls, "no event twice"
                wait_for(lambda: queue_counts(sqs, queue) == (0, 0), 30, "the queue drained")
                assert proxy.injected["503"] >= 1 and proxy.injected["reset"] == 2
                assert "emitting events to Prefect failed" in second_lines.text()
                assert "(received 2 times)" in second_lines.text(), "what the killed relay held"

                ingest = client.read_deployment_by_name("ingest-flow/ingest")

                def finished_runs():
                    runs = [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(
                        id=DeploymentFilterId(any_=[ingest.id]))) if not r.auto_scheduled]
                    return runs if runs and all(r.state.is_final() for r in runs) else None

                outputs = [f"{bucket}/spect/{key.removeprefix('audio/')}.spect.npz" for key in keys]

                def spect_files() -> list[str]:
                    fs.invalidate_cache()
                    return sorted(p for p in fs.find(f"{bucket}/spect") if p.endswith(".spect.npz"))

                wait_for(lambda: set(outputs) <= set(spect_files()), 120, "the 40 outputs")
                runs = wait_for(finished_runs, 60, "the ingest runs to end")
            # A run a batch: a few seconds of uploads each, the objects named, none listed.
            assert 1 <= len(runs) <= 8, [r.name for r in runs]
            assert all(r.state.is_completed() for r in runs), [r.state for r in runs]
            assert set(urls) <= {o for r in runs for o in r.parameters["objects"]}
            first_run = min(r.expected_start_time for r in runs)
            assert abs((first_run - first_relayed).total_seconds()) < 30, "started by the batch"

            assert spect_files() == sorted(outputs), "none for the strays"
            for key, output in zip(keys, outputs, strict=True):
                with fs.open(output, "rb") as f, np.load(f, allow_pickle=False) as npz:
                    assert str(npz["audio_path"]) == f"s3://{bucket}/{key}"
                    assert npz["s"].shape == (npz["f"].size, npz["t"].size) and npz["t"].size > 1

            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, second_lines.text()
            assert second_lines.wait_for(lambda line: "stopped" in line, 5)
            assert "Traceback" not in second_lines.text()
    finally:
        for proc in [*relays, serve]:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
