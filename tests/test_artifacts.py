"""What a flow run shows in Prefect's UI (:mod:`spectroflow.orchestration.artifacts`): the
preview, the results table and the report, made on their own (no Prefect run needed)."""

from __future__ import annotations

import csv
import io
import json
import struct

import pytest

from spectroflow import names, outputs, report
from spectroflow.orchestration import artifacts
from spectroflow.orchestration.artifacts import Preview
from spectroflow.params import SpectParams
from spectroflow.report import FileResult, ResultLog
from spectroflow.storage import Location

from conftest import REFERENCE

WRITTEN = REFERENCE / "default/birdsongrec/Bird0/3.wav.spect.npz"


def test_preview_draws_the_first_written_output_offered():
    preview = Preview(SpectParams(), Location(url="."))
    preview.offer([FileResult("a.wav", "failed", "not audio")])
    preview.offer([FileResult("3.wav", "written", "", str(WRITTEN)),
                   FileResult("later.wav", "written", "", "/no/such/file.spect.npz")])
    preview.offer([FileResult("7.wav", "written", "", "/no/such/file.spect.npz")])
    source, png = preview.result()
    assert source == "3.wav" and png.startswith(b"\x89PNG")
    assert struct.unpack(">II", png[16:24]) == (480, 180), "width and height in pixels"


def test_preview_passes_over_an_output_too_large_to_read_in_the_flow_process():
    preview = Preview(SpectParams(), Location(url="."))
    hour = FileResult("hour.wav", "written", "", "/no/such/hour.wav.spect.npz", shape=(257, 2_480_000))
    preview.offer([hour, FileResult("3.wav", "written", "", str(WRITTEN), shape=(257, 4000))])
    source, png = preview.result()
    assert source == "3.wav" and png.startswith(b"\x89PNG")


def test_preview_of_nothing_written_is_none_and_drawing_errors_surface():
    nothing = Preview(SpectParams(), Location(url="."))
    nothing.offer([FileResult("a.wav", "skipped", "labels")])
    assert nothing.result() is None

    missing = Preview(SpectParams(), Location(url="."))
    missing.offer([FileResult("b.wav", "written", "", "/no/such/file.spect.npz")])
    with pytest.raises(FileNotFoundError):
        missing.result()


def test_preview_of_a_zarr_output_draws_what_the_npz_draws(tmp_path):
    group = Location(url=str(tmp_path / "3.wav.spect.zarr"))
    outputs.write(group, outputs.read(Location(url=str(WRITTEN))), SpectParams(output_format="zarr"))
    drawn = []
    for params, output in ((SpectParams(output_format="zarr"), group.url), (SpectParams(), str(WRITTEN))):
        preview = Preview(params, Location(url="."))
        preview.offer([FileResult("3.wav", "written", "", output)])
        drawn.append(preview.result())
    assert drawn[0] == drawn[1] and drawn[0][1].startswith(b"\x89PNG")


RESULTS = [
    FileResult("/audio/b.wav", "written", "", "/spect/b.wav.spect.npz", 1.5, 32000.0, (257, 10), 0.1),
    FileResult("/audio/a.wav", "failed", "file is empty (0 bytes)"),
    FileResult("/audio/caf\udce9.wav", "failed", "not audio"),  # a Latin-1 name, not UTF-8
]
CSV_URL = "s3://lab/spect/spectroflow-reports/report-x.csv"


def test_the_report_artifact_is_the_csvs_rows_with_every_column_and_names_the_csv(monkeypatch):
    text = io.StringIO()
    report.write_csv(RESULTS, text)
    in_csv = [{k: names.printable(v) for k, v in row.items()}
              for row in csv.DictReader(io.StringIO(text.getvalue()))]
    with ResultLog() as log:
        log.add(RESULTS)
        rows, description = artifacts.report_table(log, CSV_URL)
        assert names.printable(rows) == rows, "valid UTF-8 as it is"
        assert json.loads(rows) == in_csv
        assert list(json.loads(rows)[0]) == list(report.COLUMNS)
        assert CSV_URL in description and "3" in description

        monkeypatch.setattr(artifacts, "REPORT_ROWS", 2)
        rows, description = artifacts.report_table(log, CSV_URL)
    assert json.loads(rows) == in_csv[:2]
    assert "first 2 of 3" in description and CSV_URL in description


def test_the_results_table_is_json_even_with_names_that_are_not_utf8():
    with ResultLog() as log:
        log.add(RESULTS)
        rows, _ = artifacts.results_table(log)
    assert names.printable(rows) == rows, "valid UTF-8 as it is: spelling it after breaks JSON"
    assert [row["source"] for row in json.loads(rows)] == ["a.wav", "b.wav", "caf\\xe9.wav"]
