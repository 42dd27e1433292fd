"""Discovery: the recordings a request names or a folder holds, mirrored below the source."""

from __future__ import annotations

from spectroflow.discovery import discover
from spectroflow.request import Files, RunRequest


def test_listed_files_mirror_below_their_common_folder_however_spelt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def relpaths(files, root=None):
        request = RunRequest(source=Files(files=files, root=root), destination="out")
        return [f.relpath for f in discover(request)]  # in order of relative path

    assert relpaths(["./a.wav", "b.wav"]) == ["a.wav", "b.wav"]
    assert relpaths([str(tmp_path / "d" / "a.wav"), "d/./sub//b.wav"]) == ["a.wav", "sub/b.wav"]
    assert relpaths(["./d/a.wav", "d/12:30:00.wav"], root="./d/") == ["12:30:00.wav", "a.wav"]
