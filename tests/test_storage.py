"""Storage: listings, on local disk and on a real S3 API (moto's server)."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from spectroflow import storage

from conftest import fresh_python


def test_a_listing_leaves_no_stale_copy_behind(s3):
    fs, bucket = s3
    for i in range(3):
        fs.pipe(f"{bucket}/audio/day{i}/rec{i}.wav", b"1")
    listed = storage.list_files(f"s3://{bucket}/audio", (".wav",))
    assert [(f.relpath, f.size) for f in listed] == [(f"day{i}/rec{i}.wav", 1) for i in range(3)]
    cached, _ = storage.url_to_fs(f"s3://{bucket}/audio")
    assert not cached.dircache, "the listing is not kept in memory"

    fs.pipe(f"{bucket}/audio/day0/rec0.wav", b"12345")  # replaced behind this process's back
    fs.pipe(f"{bucket}/audio/day0/new.wav", b"1")
    assert storage.file_info(f"s3://{bucket}/audio/day0/rec0.wav").size == 5
    assert storage.file_info(f"s3://{bucket}/audio/day0/new.wav").size == 1


def test_a_local_listing_holds_one_folders_details_at_a_time(tmp_path):
    for day in range(20):
        folder = tmp_path / f"day{day:02d}"
        folder.mkdir()
        for i in range(100):
            (folder / f"rec{i:03d}.wav").touch()
    tracemalloc.start()
    try:
        listed = storage.list_files(str(tmp_path), (".wav",))
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(listed) == 2000 and listed[0].relpath == "day00/rec000.wav"
    # Every file's details at once (fsspec's find) would have peaked at over three times this.
    assert peak < 1.5 * retained, (peak, retained)


def test_object_keys_are_listed_and_read_as_named(s3):
    fs, bucket = s3
    for key in ("12:30::00.wav", "x/../../evil.wav"):
        fs.pipe(f"{bucket}/audio/{key}", key.encode())
    listed = storage.list_files(f"s3://{bucket}/audio", (".wav",))
    # Not "../evil.wav" (another object), nor the object "audio/12:30" of a chained URL.
    assert [f.relpath for f in listed] == ["12:30::00.wav", "x/../../evil.wav"]
    assert [storage.read_bytes(f.url) for f in listed] == [b"12:30::00.wav", b"x/../../evil.wav"]


# 255 bytes in UTF-8 at most: the temporary name beside each is 38 bytes longer.
@pytest.mark.parametrize(
    "name", ["n" * 255, "é" * 127, "\N{BIRD}" * 63], ids=["ascii", "2-byte", "4-byte"]
)
def test_a_file_of_any_name_the_file_system_takes_is_written(tmp_path, name):
    storage.write_bytes(str(tmp_path / name), b"data")
    assert [(p.name, p.read_bytes()) for p in tmp_path.iterdir()] == [(name, b"data")]


def test_importing_the_library_changes_no_logger():
    code = (
        "import logging, spectroflow, spectroflow.storage as storage\n"
        "storage.url_to_fs('s3://lab/audio', {'anon': True})\n"
        "print([(logging.getLogger(n).level, logging.getLogger(n).filters) for n in ('s3fs', 'botocore')])\n"
    )
    assert fresh_python(code) == "[(0, []), (0, [])]"


def test_s3_filesystems_make_no_retries_below_spectroflows_unless_the_options_ask():
    fs, _ = storage.url_to_fs("s3://lab/audio", {"anon": True, "config_kwargs": {"read_timeout": 5}})
    assert (fs.retries, fs.config_kwargs) == (1, {"retries": {"total_max_attempts": 1}, "read_timeout": 5})
    # fsspec's cached instance, and one made again from a pickle (on a worker), have them too.
    assert storage.url_to_fs("s3://lab/x", {"anon": True, "config_kwargs": {"read_timeout": 5}})[0] is fs
    assert pickle.loads(pickle.dumps(fs)).retries == 1

    theirs = {"anon": True, "retries": 3, "config_kwargs": {"retries": {"mode": "adaptive"}}}
    fs, _ = storage.url_to_fs("s3://lab/audio", theirs)
    assert (fs.retries, fs.config_kwargs) == (3, {"retries": {"mode": "adaptive"}})


def test_a_location_carries_its_options_to_every_url_it_reaches(s3):
    fs, bucket = s3
    options = {"client_kwargs": {"endpoint_url": fs.client_kwargs["endpoint_url"]}}
    out = storage.Location(url=f"s3://{bucket}/loc", options=options)
    written = out.join("day1/a.bin").write_bytes(b"abc")
    (found,) = out.list_files((".bin",))
    assert (found.relpath, found.version) == ("day1/a.bin", written)
    assert out.at(found.url).read_bytes() == b"abc" and out.kind() == "folder"


NAMES = ("a.wav", "a.wav-b.wav", "a b.wav", "a/b.wav", "a/c/d.wav", "a0.wav", "B.wav", "é.wav")


def test_a_local_listing_arrives_in_order_of_relative_path(tmp_path):
    for name in reversed(NAMES):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    listed = [f.relpath for f in storage.iter_files(str(tmp_path), (".wav",))]
    assert listed == sorted(NAMES)


def test_an_s3_listing_arrives_a_page_at_a_time_in_order(s3, monkeypatch):
    fs, bucket = s3
    for name in NAMES:
        fs.pipe(f"{bucket}/audio/{name}", b"1")
    fs.pipe(f"{bucket}/audio/folder-marker/", b"")
    monkeypatch.setattr(storage.s3, "S3_PAGE", 3)
    backend = storage.backend_for(storage.url_to_fs(f"s3://{bucket}/audio")[0])
    pages = list(backend.pages(f"{bucket}/audio"))
    assert len(pages) == 3 and all(len(page) <= 3 for page in pages), pages  # 9 objects
    assert sum(map(len, pages)) == len(NAMES), "no folder marker is listed as a file"
    listed = [f.relpath for f in storage.iter_files(f"s3://{bucket}/audio", (".wav",))]
    assert listed == sorted(NAMES)


@pytest.mark.parametrize("direct", ["0", "1", "auto"], ids=["page-cache", "direct", "measured"])
@pytest.mark.parametrize("where", ["disk", "tmpfs"])
@pytest.mark.parametrize("size", [0, 1, storage.DIRECT_CHUNK - 1, storage.DIRECT_CHUNK,
                                  storage.DIRECT_CHUNK + 1, 3 * storage.DIRECT_CHUNK + 12345])
def test_a_local_file_is_written_whole_in_writes_of_any_size(tmp_path, monkeypatch, where, size,
                                                             direct):
    # Written past the page cache, chunks of a block device's file go with O_DIRECT, the tail
    # through it; tmpfs refuses O_DIRECT and gets every write through the page cache.
    monkeypatch.setenv(storage.DIRECT_WRITES, direct)
    if where == "tmpfs" and not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm here")
    folder = tmp_path if where == "disk" else Path(tempfile.mkdtemp(dir="/dev/shm"))
    data = np.random.default_rng(size).bytes(size)
    pieces = np.cumsum(np.random.default_rng(1).integers(1, 300_000, 100))

    def write(fh):
        start = 0
        for stop in [*pieces[pieces < size], size]:
            fh.write(memoryview(data)[start:stop])
            start = stop

    try:
        url = str(folder / "out.bin")
        assert storage.write_with(url, write) == storage.file_info(url).version
        assert (folder / "out.bin").read_bytes() == data
        assert sorted(p.name for p in folder.iterdir()) == ["out.bin"]
    finally:
        if where == "tmpfs":
            shutil.rmtree(folder)


def test_a_write_that_fails_leaves_the_earlier_file_and_no_temporary_file(tmp_path):
    url = str(tmp_path / "out.bin")
    storage.write_bytes(url, b"earlier")

    def write(fh):
        fh.write(bytes(3 * storage.DIRECT_CHUNK))
        raise RuntimeError("the compute failed")

    with pytest.raises(RuntimeError, match="the compute failed"):
        storage.write_with(url, write)
    assert (tmp_path / "out.bin").read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_conditional_write_replaces_only_the_version_it_read(store, request, tmp_path):
    if store == "s3":
        _, bucket = request.getfixturevalue("s3")
        where = storage.Location(url=f"s3://{bucket}/m.csv")
    else:
        where = storage.Location(url=str(tmp_path / "m.csv"))
    first = where.write_with(lambda fh: fh.write(b"1"), if_absent=True)
    with pytest.raises(storage.VersionConflict):
        where.write_with(lambda fh: fh.write(b"2"), if_absent=True)
    second = where.write_with(lambda fh: fh.write(b"22"), if_version=first)
    with pytest.raises(storage.VersionConflict):  # another writer replaced what was read
        where.write_with(lambda fh: fh.write(b"3"), if_version=first)
    assert where.read_bytes() == b"22" and where.info().version == second


def test_a_conditional_upload_in_parts_replaced_meanwhile_is_refused(s3, monkeypatch):
    """Another writer replaces the object while this one uploads its parts: the completion is
    refused, whether or not the store checks the condition on CompleteMultipartUpload (moto's
    server does not), and the other writer's object stays."""
    _, bucket = s3
    monkeypatch.setattr(storage.s3, "PART_BYTES", 5 << 20)  # S3's smallest part
    where = storage.Location(url=f"s3://{bucket}/manifest.csv")
    first = where.write_with(lambda fh: fh.write(b"first"), if_absent=True)

    def write(fh):
        fh.write(bytes(6 << 20))  # the first part is sent
        where.write_bytes(b"another run's")
        fh.write(bytes(6 << 20))

    with pytest.raises(storage.VersionConflict):
        where.write_with(write, if_version=first)
    assert where.read_bytes() == b"another run's"
    with pytest.raises(storage.VersionConflict):  # absent when it started, present at the end
        storage.Location(url=f"s3://{bucket}/new.csv").write_with(
            lambda fh: (fh.write(bytes(6 << 20)),
                        storage.write_bytes(f"s3://{bucket}/new.csv", b"x"),
                        fh.write(b"y")), if_absent=True)


#: A write killed mid-way, as a killed run's writes are (SIGKILL, power loss): nothing cleans up.
_KILLED_WRITE = """
import os, signal, sys
from spectroflow import storage

def write(fh):
    fh.write(b"half an output")
    os.kill(os.getpid(), signal.SIGKILL)

storage.write_with(sys.argv[1], write)
"""


def _killed_write(path: Path) -> Path:
    """The temporary file a write of ``path`` killed mid-way leaves beside it."""
    import subprocess
    import sys

    before = set(path.parent.iterdir()) if path.parent.exists() else set()
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITE, str(path)])
    assert killed.returncode == -9
    (left,) = set(path.parent.iterdir()) - before
    return left


def test_a_run_removes_the_temporary_files_of_killed_writes_once_they_are_old(tmp_path, caplog):
    import spectroflow
    from spectroflow import plan
    from spectroflow.request import RunRequest

    from conftest import some_wavs

    audio, out = some_wavs(tmp_path / "audio", 2), tmp_path / "out"
    (audio / "day2").mkdir()
    os.replace(next(audio.glob("*.wav")), audio / "day2" / "a.wav")
    assert spectroflow.run("wav", None, str(out), audio_dir=str(audio),
                           scheduler="synchronous").counts == {"written": 2}
    outputs = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.spect.npz")}
    stale = _killed_write(out / "day2" / "a.wav.spect.npz")
    fresh = _killed_write(out / "b.wav.spect.npz")  # a run on this destination may be writing it
    assert stale.name.startswith(".a.wav.spect.npz.") and stale.name.endswith(".tmp")
    day_ago = time.time() - 24 * 3600
    os.utime(stale, (day_ago, day_ago))
    not_ours = out / ".notes.tmp"  # hidden and old, but not of spectroflow's naming
    not_ours.touch()
    os.utime(not_ours, (day_ago, day_ago))

    plan.prepare(RunRequest.from_vak("wav", None, str(out), audio_dir=str(audio)), dry_run=True)
    assert stale.exists(), "a dry run removes nothing"

    with caplog.at_level(logging.INFO, logger="spectroflow"):
        again = spectroflow.run("wav", None, str(out), audio_dir=str(audio), scheduler="synchronous")
    assert again.counts == {"up_to_date": 2}
    assert not stale.exists() and fresh.exists() and not_ours.exists()
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.spect.npz")} == outputs
    assert "removed 1 temporary files" in caplog.text, caplog.text


def test_a_run_aborts_the_uploads_killed_runs_left_once_they_are_old(s3):
    import boto3

    import spectroflow

    from conftest import WAVS

    fs, bucket = s3
    fs.pipe(f"{bucket}/audio/a.wav", WAVS[0].read_bytes())
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])

    def upload(key: str, parts: int) -> str:
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        for number in range(1, parts + 1):
            client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                               Body=b"part")
        return upload_id

    # moto dates every upload's start to 2010: an upload without parts is old (a run killed
    # just after starting it); one whose last part was sent now may be a live run's.
    stale = upload("spect/day1/b.wav.spect.npz", 0)
    live = upload("spect/day1/c.wav.spect.npz", 1)
    elsewhere = upload("spect-old/d.wav.spect.npz", 0)  # not under the destination
    summary = spectroflow.run("wav", None, f"s3://{bucket}/spect", audio_dir=f"s3://{bucket}/audio",
                              scheduler="synchronous")
    assert summary.counts == {"written": 1}
    left = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket)["Uploads"]}
    assert stale not in left and left == {live, elsewhere}
