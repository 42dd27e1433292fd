"""Run reports: the CSV rows, and the on-disk log a flow run keeps its results in."""

from __future__ import annotations

import io
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spectroflow import report
from spectroflow.report import FileResult, ResultLog

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
maybe_float = st.none() | st.floats(allow_nan=False, width=64)
results = st.builds(
    FileResult,
    source=text,
    status=st.sampled_from(["written", "up_to_date", "skipped", "failed", "missing_audio"]),
    reason=text,
    output=st.none() | text,
    duration=maybe_float,
    samplerate=st.none() | st.integers(1, 10**6) | st.floats(1, 1e6),
    shape=st.none() | st.tuples(st.integers(0, 10**5), st.integers(0, 10**5)),
    seconds=maybe_float,
)


def csv_text(rows, ordered=False) -> str:
    out = io.StringIO()
    report.write_csv(rows, out, ordered)
    return out.getvalue()


# Threads left by earlier tests in this process (Prefect's, Dask's) may draw from the global
# random module while Hypothesis generates, which it takes for a strategy using it.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies:"
                            "hypothesis.errors.HypothesisDeprecationWarning")
@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(results, max_size=8), max_size=5))
def test_the_log_gives_back_what_it_was_given_in_the_reports_order(batches):
    everything = [r for batch in batches for r in batch]
    with ResultLog() as log:
        for batch in batches:
            log.add(batch)
        assert list(log.rows()) == sorted(everything, key=lambda r: (r.source, r.status))
        assert csv_text(log.rows(), ordered=True) == csv_text(everything)
        summary = log.summary("report.csv")
    failed = sorted((r for r in everything if r.status == "failed"), key=lambda r: r.source)
    assert summary.failed == [(r.source, r.reason) for r in failed]
    assert summary.counts == report.summarize(everything).counts
    assert summary.ok == (not failed) == report.summarize(everything).ok


def test_the_log_lists_a_bounded_number_of_failures_and_deletes_its_file(tmp_path, monkeypatch):
    # The log keeps its file in the temporary folder: this test's own, watched here.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    many = [FileResult(f"rec{i:05d}.wav", "failed", f"reason {i}")
            for i in range(ResultLog.FAILURES_IN_SUMMARY + 5)]
    log = ResultLog()
    log.add(many[::-1])
    log.add([FileResult("a.wav", "written", output="a.spect.npz")])
    kept = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert kept and sum(p.stat().st_size for p in kept) > 0, "the results are on disk"
    summary = log.summary()
    assert summary.counts == {"failed": len(many), "written": 1} and not summary.ok
    assert summary.failed == [(r.source, r.reason) for r in many[:ResultLog.FAILURES_IN_SUMMARY]]
    assert summary.outputs is None
    assert [r.source for r in log.rows("written")] == ["a.wav"]
    log.close()
    assert not any(tmp_path.iterdir()), "closing the log deletes what it wrote"
