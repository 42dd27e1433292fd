"""Storage on a real S3 API (moto's server): listings."""

from __future__ import annotations

from spectroflow import storage


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
