"""The ingestion flow on a moto-server bucket: only new or changed objects are computed."""

from __future__ import annotations

import csv
import io

import pytest
from test_flow import flow_logs

from spectroflow import manifest
from spectroflow.flows.ingest import ingest_flow
from spectroflow.params import DaskSettings

from conftest import WAVS

pytestmark = pytest.mark.slow
ONE_WORKER = DaskSettings(n_workers=1)


def outputs(fs, bucket) -> dict[str, str]:
    """Output key -> its ETag (changes whenever the object is rewritten)."""
    fs.invalidate_cache()
    found = fs.find(f"{bucket}/spect", detail=True)
    return {k: v["ETag"] for k, v in found.items() if k.endswith(".spect.npz")}


def written_files(fs, bucket) -> dict[str, str]:
    """Every object under the destination but outputs and markers -> its ETag."""
    fs.invalidate_cache()
    found = fs.find(f"{bucket}/spect", detail=True)
    return {k: v["ETag"] for k, v in found.items()
            if not k.endswith(".spect.npz") and "/.spectroflow/" not in k}


def test_ingest_computes_only_new_and_changed_objects(prefect_api, s3):
    fs, bucket = s3
    for wav in WAVS[:5]:
        fs.pipe(f"{bucket}/audio/day1/{wav.name}", wav.read_bytes())
    source, destination = f"s3://{bucket}/audio", f"s3://{bucket}/spect"

    state = ingest_flow(source=source, destination=destination, audio_format="wav", return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["counts"] == {"written": 5}
    first = outputs(fs, bucket)
    assert sorted(first) == sorted(f"{bucket}/spect/day1/{w.name}.spect.npz" for w in WAVS[:5])

    listed = written_files(fs, bucket)
    state = ingest_flow(source=source, destination=destination, dask=ONE_WORKER, return_state=True)
    assert state.result()["counts"] == {"up_to_date": 5}
    assert state.result()["report"] is None
    messages = flow_logs(state.state_details.flow_run_id)
    assert any(m.startswith("nothing to compute") for m in messages)
    assert any(m.startswith("manifest unchanged") for m in messages)
    assert outputs(fs, bucket) == first
    assert written_files(fs, bucket) == listed, "no report, the manifest not rewritten"

    for wav in WAVS[5:8]:
        fs.pipe(f"{bucket}/audio/day2/{wav.name}", wav.read_bytes())
    state = ingest_flow(source=source, destination=destination, dask=ONE_WORKER, return_state=True)
    assert state.result()["counts"] == {"written": 3, "up_to_date": 5}
    second = outputs(fs, bucket)
    assert {k: v for k, v in second.items() if k in first} == first, "old outputs untouched"

    # Replace one recording with other audio: exactly its output is rewritten.
    changed = f"{bucket}/audio/day1/{WAVS[0].name}"
    fs.pipe(changed, WAVS[9].read_bytes())
    state = ingest_flow(source=source, destination=destination, dask=ONE_WORKER, return_state=True)
    assert state.result()["counts"] == {"written": 1, "up_to_date": 7}
    third = outputs(fs, bucket)
    rewritten = {k for k in third if third[k] != second[k]}
    assert rewritten == {f"{bucket}/spect/day1/{WAVS[0].name}.spect.npz"}


def test_ingest_of_named_objects_keeps_the_source_tree(prefect_api, s3):
    fs, bucket = s3
    for wav in WAVS[:3]:
        fs.pipe(f"{bucket}/audio/site-a/{wav.name}", wav.read_bytes())
    fs.pipe(f"{bucket}/audio/site-a/notes.txt", b"not audio")
    source = f"s3://{bucket}/audio"
    named = [f"{source}/site-a/{WAVS[1].name}", f"{source}/site-a/notes.txt"]

    state = ingest_flow(source=source, destination=f"s3://{bucket}/spect", objects=named,
                        dask=ONE_WORKER, return_state=True)
    assert state.result()["counts"] == {"written": 1}
    assert list(outputs(fs, bucket)) == [f"{bucket}/spect/site-a/{WAVS[1].name}.spect.npz"]

    # An object outside the source (a batch event names a whole bucket's) is not this
    # deployment's: left alone; the others are computed.
    stray = f"s3://{bucket}/elsewhere/{WAVS[1].name}"
    named = [stray, f"{source}/site-a/{WAVS[0].name}", f"{source}/site-a/{WAVS[2].name}"]
    mixed = ingest_flow(source=source, destination=f"s3://{bucket}/spect", dask=ONE_WORKER,
                        objects=named, return_state=True)
    assert mixed.is_completed(), mixed.message
    assert mixed.result()["counts"] == {"written": 2}
    assert len(outputs(fs, bucket)) == 3


def test_event_runs_leave_a_large_manifests_rows_to_the_scheduled_run(prefect_api, s3,
                                                                     monkeypatch):
    fs, bucket = s3
    for wav in WAVS[:3]:
        fs.pipe(f"{bucket}/audio/{wav.name}", wav.read_bytes())
    source, destination = f"s3://{bucket}/audio", f"s3://{bucket}/spect"
    ingest_flow(source=source, destination=destination, dask=ONE_WORKER, objects=[
        f"{source}/{WAVS[0].name}"])
    monkeypatch.setattr(manifest, "DEFER_ABOVE_BYTES", 0)  # every manifest is large

    def csv_paths() -> list[str]:
        fs.invalidate_cache()
        text = fs.cat(f"{bucket}/spect/{manifest.MANIFEST_NAME}").decode()
        return [row["audio_path"] for row in csv.DictReader(io.StringIO(text))]

    def journal() -> list[str]:
        fs.invalidate_cache()
        return fs.find(f"{bucket}/spect/{manifest.JOURNAL_DIR}")

    state = ingest_flow(source=source, destination=destination, dask=ONE_WORKER,
                        objects=[f"{source}/{WAVS[1].name}"], return_state=True)
    assert state.result()["counts"] == {"written": 1}
    assert csv_paths() == [f"{source}/{WAVS[0].name}"], "the event run did not rewrite it"
    assert len(journal()) == 1
    everything = sorted(f"{source}/{wav.name}" for wav in WAVS[:3])
    assert sorted(r["audio_path"] for r in manifest.read(destination)) == everything[:2]

    scheduled = ingest_flow(source=source, destination=destination, dask=ONE_WORKER,
                            return_state=True)
    assert scheduled.result()["counts"] == {"written": 1, "up_to_date": 2}
    assert csv_paths() == everything and journal() == []
    assert all(row["status"] == "ok" and row["duration"] for row in manifest.read(destination))
