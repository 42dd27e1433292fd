"""Faults on real components: a flaky S3 (a fault-injecting proxy in front of moto's server),
killed workers, a killed flow, concurrent runs, refused credentials; and no secret leaks."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import spectroflow
from spectroflow import progress, provenance, storage
from spectroflow.flows.spectrograms import spectrogram_flow
from spectroflow.params import DaskSettings

from conftest import (
    WAVS,
    OutputLines,
    assert_matches_fingerprint,
    load_npz,
    moto_server_checking_credentials,
    set_up_workers,
)
from faultproxy import FaultProxy

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def s3_options(endpoint: str) -> dict:
    """s3fs on ``endpoint``, as spectroflow makes it: with no retries of its own or botocore's."""
    return {"client_kwargs": {"endpoint_url": endpoint}, "skip_instance_cache": True}


def put_wavs(fs, bucket: str, wavs) -> None:
    for wav in wavs:
        fs.pipe(f"{bucket}/audio/{wav.name}", wav.read_bytes())
    fs.invalidate_cache()


def _retries_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "transient storage error" in r.getMessage()]


def test_transient_s3_faults_are_retried_logged_and_every_file_is_right(s3, fingerprints, caplog):
    fs, bucket = s3
    put_wavs(fs, bucket, WAVS)
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"], rate=0.15, seed=7) as proxy:
        # Runs of faults on two objects, so that their retries must show in the log.
        proxy.fail_times("GET", rf"/audio/{WAVS[3].name}$", 2, "reset")
        proxy.fail_times("PUT", rf"/spect/{WAVS[4].name}\.spect\.npz", 2, "503")
        options = s3_options(proxy.url)
        with caplog.at_level(logging.WARNING, logger="spectroflow"):
            summary = spectroflow.run("wav", None, f"s3://{bucket}/spect", audio_dir=f"s3://{bucket}/audio",
                                      storage_options=options, scheduler="threads", num_workers=2)
        assert summary.ok, summary.failed
        assert summary.counts == {"written": len(WAVS)}
        assert set(proxy.injected) == {"503", "reset", "truncate"}, proxy.injected
    retries = _retries_logged(caplog)
    assert any(f"{bucket}/audio/{WAVS[3].name}" in m for m in retries), retries
    # s3fs turns S3's SlowDown into OSError(EBUSY, "Please reduce your request rate.").
    assert any(f"{bucket}/spect/{WAVS[4].name}.spect.npz" in m and "reduce your request rate" in m
               for m in retries), retries
    direct = s3_options(os.environ["AWS_ENDPOINT_URL"])
    for wav in WAVS:
        arrays = load_npz(f"s3://{bucket}/spect/{wav.name}.spect.npz", direct)
        assert_matches_fingerprint(arrays, fingerprints[f"default/birdsongrec/Bird0/{wav.name}.spect.npz"])


def test_a_throttled_request_is_retried_by_spectroflow_alone_and_each_retry_logged(s3, caplog):
    _, bucket = s3
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        proxy.fail_times("PUT", r"/out/a\.bin$", 2, "503")
        with caplog.at_level(logging.WARNING, logger="spectroflow"):
            storage.write_bytes(f"s3://{bucket}/out/a.bin", b"abc", s3_options(proxy.url))
        assert proxy.injected == {"503": 2}
    retries = _retries_logged(caplog)
    assert len(retries) == 2, retries
    for attempt, message in enumerate(retries, 1):
        assert f"put_object of {bucket}/out/a.bin (attempt {attempt} of {storage.RETRY_ATTEMPTS})" in message
        assert "retrying in" in message and "reduce your request rate" in message
    assert storage.read_bytes(f"s3://{bucket}/out/a.bin", s3_options(os.environ["AWS_ENDPOINT_URL"])) == b"abc"


@pytest.mark.parametrize(("fault", "sent"), [("503", 1), ("truncate", 1), ("reset", 2)])
def test_a_fault_that_never_clears_reaches_the_store_once_per_retry_attempt(s3, caplog, fault, sent):
    # s3fs or botocore retrying below spectroflow would multiply the requests (by 25 by default).
    # aiohttp sends a request again, once, on a connection dropped before any answer: HTTP's rule
    # for a kept-alive connection the server may have closed.
    fs, bucket = s3
    fs.pipe(f"{bucket}/audio/a.wav", bytes(1000))
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        proxy.fail_always("GET", r"/audio/a\.wav$", fault)
        with caplog.at_level(logging.WARNING, logger="spectroflow"), \
                pytest.raises(Exception) as raised:  # noqa: PT011 - each fault's error is its own
            storage.read_bytes(f"s3://{bucket}/audio/a.wav", s3_options(proxy.url), size=1000)
        assert proxy.injected == {fault: sent * storage.RETRY_ATTEMPTS}
    assert storage.is_transient(raised.value)
    assert len(_retries_logged(caplog)) == storage.RETRY_ATTEMPTS - 1


def test_faults_that_never_clear_fail_those_files_and_leave_no_object(s3):
    fs, bucket = s3
    put_wavs(fs, bucket, WAVS[:4])
    victim = WAVS[1].name
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        proxy.fail_always("PUT", rf"/spect/{victim}\.spect\.npz")
        proxy.fail_always("GET", rf"/audio/{WAVS[2].name}$", "truncate")
        summary = spectroflow.run("wav", None, f"s3://{bucket}/spect", audio_dir=f"s3://{bucket}/audio",
                                  storage_options=s3_options(proxy.url), scheduler="threads")
    failed = dict(summary.failed)
    assert sorted(failed) == [f"s3://{bucket}/audio/{WAVS[1].name}", f"s3://{bucket}/audio/{WAVS[2].name}"]
    reason = failed[f"s3://{bucket}/audio/{victim}"]
    assert reason.startswith(f"writing s3://{bucket}/spect/{victim}.spect.npz failed (retries exhausted)")
    assert "reduce your request rate" in reason
    assert summary.counts == {"written": 2, "failed": 2}
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/spect/{victim}.spect.npz")
    assert not fs.exists(f"{bucket}/spect/{WAVS[2].name}.spect.npz")
    report = fs.cat(summary.report.removeprefix("s3://")).decode()
    assert victim in report and WAVS[2].name in report


def _outputs_valid(folder: Path) -> list[Path]:
    found = sorted(folder.rglob("*.spect.npz"))
    for path in found:
        with np.load(path, allow_pickle=False) as npz:
            assert npz["s"].shape[1] == npz["t"].shape[0], path
    return found


def _many_wavs(folder: Path, copies: int) -> int:
    for i in range(copies):
        for wav in WAVS:
            dest = folder / f"rep{i}" / wav.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if wav.stat().st_dev == folder.stat().st_dev:
                os.link(wav, dest)
            else:
                dest.write_bytes(wav.read_bytes())
    return copies * len(WAVS)


def test_a_killed_worker_loses_nothing_and_a_rerun_recomputes_nothing_finished(prefect_api, tmp_path):
    from distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL

    audio, out = tmp_path / "audio", tmp_path / "out"
    total = _many_wavs(audio, 4)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env={"PREFECT_API_URL": PREFECT_API_URL.value()}) as cluster, Client(cluster) as client:
        set_up_workers(client)
        victim = next(iter(client.run(os.getpid).values()))
        six_done = threading.Event()

        def on_progress(done: int, total: int) -> None:
            if done >= 6:
                six_done.set()

        def kill_a_worker_mid_run():
            six_done.wait(120)
            os.kill(victim, signal.SIGKILL)

        killer = threading.Thread(target=kill_a_worker_mid_run)
        killer.start()
        # The flow reports each file its workers finish (as for the command's progress bar).
        with progress.listen(on_progress):
            state = spectrogram_flow(source=str(audio), destination=str(out), batch_size=4,
                                     dask=DaskSettings(address=cluster.scheduler_address),
                                     return_state=True)
        killer.join()
        assert six_done.is_set(), "the worker was killed once six files were done"
    first = state.result(raise_on_failure=False)["counts"]
    # Dask reruns the killed worker's batch elsewhere.
    assert state.is_completed(), state.message
    assert first.get("written", 0) == total, first
    before = {p: p.stat().st_mtime_ns for p in _outputs_valid(out)}
    finished = set(provenance.markers(str(out)))

    rerun = spectrogram_flow(source=str(audio), destination=str(out), dask=DaskSettings(n_workers=1),
                             return_state=True)
    assert rerun.is_completed(), rerun.message
    counts = rerun.result()["counts"]
    assert counts.get("up_to_date", 0) >= first.get("written", 0)
    assert counts.get("up_to_date", 0) + counts.get("written", 0) == total
    assert len(_outputs_valid(out)) == total
    rewritten = {p.relative_to(out).as_posix() for p, t in before.items() if p.stat().st_mtime_ns != t}
    assert finished and not rewritten & finished, "finished outputs are not recomputed"


#: Run on a worker (sent by value): the batch's third file raises a transient error, once.
_FAULT_ON_THIRD_FILE = """
def arm(flag):
    import os
    from spectroflow import pipeline

    real, calls = pipeline.process_file, []

    def process_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and not os.path.exists(flag):
            open(flag, "w").close()
            raise ConnectionResetError("connection reset (injected)")
        return real(*args, **kwargs)

    pipeline.process_file = process_file
"""


def test_a_failed_batch_is_not_retried_and_a_rerun_keeps_the_files_it_had_finished(prefect_api, tmp_path):
    from distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL
    from test_flow import flow_logs

    audio, out = tmp_path / "audio", tmp_path / "out"
    audio.mkdir()
    for wav in WAVS[:6]:
        os.link(wav, audio / wav.name)
    namespace = {}
    exec(_FAULT_ON_THIRD_FILE, namespace)
    flag = tmp_path / "fault-injected"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env={"PREFECT_API_URL": PREFECT_API_URL.value()}) as cluster, Client(cluster) as client:
        set_up_workers(client)
        client.run(namespace["arm"], str(flag))
        state = spectrogram_flow(source=str(audio), destination=str(out), batch_size=6,
                                 dask=DaskSettings(address=cluster.scheduler_address),
                                 return_state=True)
    assert flag.exists(), "the fault fired"
    # Storage faults are retried by the storage layer alone: the task fails once, its files with it.
    assert state.is_failed() and state.result(raise_on_failure=False)["counts"] == {"failed": 6}
    assert any("connection reset (injected)" in m for m in flow_logs(state.state_details.flow_run_id))
    assert len(_outputs_valid(out)) == 2

    rerun = spectrogram_flow(source=str(audio), destination=str(out), dask=DaskSettings(n_workers=1),
                             return_state=True)
    assert rerun.is_completed(), rerun.message
    assert rerun.result()["counts"] == {"up_to_date": 2, "written": 4}
    assert len(_outputs_valid(out)) == 6


#: The flow in a process of its own, printing "done N" as its workers finish files.
_FLOW_PRINTING_PROGRESS = """
import sys
from spectroflow.flows.spectrograms import spectrogram_flow
from spectroflow import progress
from spectroflow.params import DaskSettings

with progress.listen(lambda done, total: print("done", done, flush=True)):
    spectrogram_flow(source=sys.argv[1], destination=sys.argv[2], batch_size=2,
                     dask=DaskSettings(n_workers=2))
"""


def test_a_killed_flow_leaves_no_truncated_output_and_a_rerun_finishes(prefect_api, tmp_path):
    from prefect.settings import PREFECT_API_URL

    audio, out = tmp_path / "audio", tmp_path / "out"
    total = _many_wavs(audio, 4)
    # The harness's API: without it the child would start a temporary API of its own, which
    # Prefect gives 20 s to start (too few on a busy machine).
    proc = subprocess.Popen([sys.executable, "-c", _FLOW_PRINTING_PROGRESS, str(audio), str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
                            start_new_session=True)
    output = OutputLines(proc.stdout)  # the run's log lines too: a failure shows where it was

    def done(line: str) -> int:  # a log line written at the same time may follow on its line
        found = re.match(r"done (\d+)", line)
        return int(found.group(1)) if found else 0

    try:
        ten_done = output.wait_for(lambda line: done(line) >= 10, 300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the flow and its Dask workers, mid-write
        proc.wait()
    assert ten_done, f"the flow did not report 10 files done:\n{output.text()}"
    done_before = len(_outputs_valid(out))
    assert 10 <= done_before < total

    rerun = spectrogram_flow(source=str(audio), destination=str(out), dask=DaskSettings(n_workers=2),
                             return_state=True)
    assert rerun.is_completed(), rerun.message
    counts = rerun.result()["counts"]
    assert counts["up_to_date"] >= done_before - 2  # an output can land just before its marker
    assert counts["up_to_date"] + counts["written"] == total
    assert len(_outputs_valid(out)) == total


def test_two_runs_on_one_destination_at_once_write_whole_files(tmp_path, fingerprints):
    audio, out = tmp_path / "audio", tmp_path / "out"
    _many_wavs(audio, 1)
    results = []
    runs = [threading.Thread(target=lambda: results.append(spectroflow.run(
        "wav", None, str(out), audio_dir=str(audio), scheduler="threads", num_workers=1, skip_done=False)))
        for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert [r.counts for r in results] == [{"written": len(WAVS)}] * 2
    for path in _outputs_valid(out):
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        assert_matches_fingerprint(arrays, fingerprints[f"default/birdsongrec/Bird0/{path.name}"])
    assert not list(out.rglob(".*.tmp")), "no temporary file left behind"


@pytest.fixture
def strict_s3(tmp_path):
    """A second moto server that checks credentials (IAM auth on); yields (endpoint, good keys).

    Its first three requests go unchecked: they create the user "lab", its access key and its
    policy (every S3 action); then the bucket "lab" is made with those keys.
    """
    import json

    import boto3

    with moto_server_checking_credentials(unchecked=3) as url:
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="lab")
        created = iam.create_access_key(UserName="lab")["AccessKey"]
        iam.put_user_policy(UserName="lab", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        keys = {"key": created["AccessKeyId"], "secret": created["SecretAccessKey"]}
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=keys["key"],
                     aws_secret_access_key=keys["secret"]).create_bucket(Bucket="lab")
        yield url, keys


SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRETKEY"
ONE_WAV = [str(WAVS[0])]


def test_credentials_are_used_wrong_ones_fail_at_start_and_the_secret_never_shows(
        prefect_api, strict_s3, tmp_path, caplog):
    endpoint, good = strict_s3
    endpoint_only = {"client_kwargs": {"endpoint_url": endpoint}, "skip_instance_cache": True}
    summary = spectroflow.run("wav", None, "s3://lab/spect", audio_files=ONE_WAV,
                              storage_options={**endpoint_only, **good})
    assert summary.counts == {"written": 1}

    wrong = {"key": "AKIAWRONGWRONGWRONG", "secret": SECRET}
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(storage.StorageError) as info:
            spectroflow.run("wav", None, "s3://lab/spect", audio_files=ONE_WAV,
                            storage_options={**endpoint_only, **wrong})
    message = str(info.value)
    assert "cannot take a file" in message and "NoSuchBucket" not in message
    assert "Access Key Id you provided does not exist" in message, message
    assert SECRET not in message and SECRET not in repr(info.value.__cause__)
    assert caplog.records and SECRET not in caplog.text

    # Through the flow, credentials come from a Prefect Secret block, never a parameter.
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from test_flow import flow_logs

    Secret(value=good).save("lab-s3-good", overwrite=True)
    state = spectrogram_flow(source=ONE_WAV, destination="s3://lab/flow", storage_options=endpoint_only,
                             storage_secret="lab-s3-good", dask=DaskSettings(n_workers=1), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["counts"] == {"written": 1}

    Secret(value=wrong).save("lab-s3", overwrite=True)
    state = spectrogram_flow(source=ONE_WAV, destination="s3://lab/flow", storage_options=endpoint_only,
                             storage_secret="lab-s3", return_state=True)
    assert state.is_failed() and "Access Key Id" in (state.message or ""), state.message
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert SECRET not in str(run.parameters) and SECRET not in (state.message or "")
    messages = flow_logs(state.state_details.flow_run_id)
    assert messages and all(SECRET not in m for m in messages)
