"""``spectroflow prep``: vak 1.1.0's frame-classification dataset, checked against what vak wrote.

The oracle is ``vak-reference/prep-gy6or6-tweety`` (vak 1.1.0's own ``vak prep`` of the gy6or6
sample, see its README) and ``vak-reference/tweety`` (its spectrogram files). vak's split is random
and unseeded, so recordings are compared one by one, and the splits against vak's rules.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from spectroflow import manifest, vakconfig
from spectroflow.cli import app
from spectroflow.vakprep import dataset as prep_dataset
from spectroflow.vakprep import labels as prep_labels
from spectroflow.vakprep import split as prep_split

from conftest import (
    DATA,
    REFERENCE,
    assert_arrays_match,
    assert_matches_fingerprint,
    load_npz,
    upload_samples,
)

VAK_PREP = REFERENCE / "prep-gy6or6-tweety"
VAK_DATASET = next(VAK_PREP.glob("032312-vak-frame-classification-dataset-generated-*"))
VAK_CSV = pd.read_csv(next(VAK_DATASET.glob("*.csv")))
LABELSET = set("iabcdefghjk")
DURS = {"train": 20, "val": 10, "test": 10}
RECORD_NAME = prep_dataset.RECORD
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _name(path: str) -> str:
    return Path(path).name


def write_config(tmp_path: Path, data_dir: Path | str = DATA / "gy6or6" / "032312") -> Path:
    """vak's own config for the reference, pointed at the sample data and a fresh output_dir."""
    text = (VAK_PREP / "gy6or6_prep.before.toml").read_text()
    output_dir = tmp_path / "prep"
    output_dir.mkdir(exist_ok=True)
    text = text.replace('data_dir = "gy6or6/032312"', f'data_dir = "{data_dir}"')
    text = text.replace('output_dir = "vak-reference/prep-gy6or6-tweety"',
                        f'output_dir = "{output_dir}"')
    path = tmp_path / "gy6or6_prep.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def prepped(tmp_path_factory) -> prep_dataset.PrepResult:
    tmp_path = tmp_path_factory.mktemp("vakprep")
    config = write_config(tmp_path)
    # With seed 7 the split takes all six recordings (vak's may leave some out), so each one is
    # compared with vak's.
    return prep_dataset.prep(prep_dataset.PrepRequest.from_config(config, seed=7))


def test_the_dataset_folder_and_csv_are_named_as_vak_names_them(prepped):
    path = Path(prepped.dataset_path)
    match = re.fullmatch(r"032312-vak-frame-classification-dataset-generated-(\d{6}_\d{6})",
                         path.name)
    assert match, path.name
    assert Path(prepped.csv_path) == path / f"032312_prep_{match[1]}.csv"


def test_metadata_and_labelmap_equal_vaks(prepped):
    path = Path(prepped.dataset_path)
    metadata = json.loads((path / "metadata.json").read_text())
    expected = json.loads((VAK_DATASET / "metadata.json").read_text())
    assert list(metadata) == list(expected)
    assert metadata == {**expected, "dataset_csv_filename": Path(prepped.csv_path).name}
    assert (path / "labelmap.json").read_text() == (VAK_DATASET / "labelmap.json").read_text()


def test_csv_has_vaks_columns_and_durations_per_recording(prepped):
    csv = pd.read_csv(prepped.csv_path)
    assert list(csv.columns) == list(VAK_CSV.columns)
    assert sorted(map(_name, csv.audio_path)) == sorted(map(_name, VAK_CSV.audio_path))
    ours = csv.assign(name=csv.audio_path.map(_name)).set_index("name")
    vaks = VAK_CSV.assign(name=VAK_CSV.audio_path.map(_name)).set_index("name")
    for name, row in ours.iterrows():
        ref = vaks.loc[name]
        assert row.duration == ref.duration and row.timebin_dur == ref.timebin_dur, name
        assert row.annot_format == "notmat" and _name(row.annot_path) == _name(ref.annot_path)
        assert Path(row.audio_path).is_absolute() and Path(row.annot_path).is_absolute()
        assert Path(row.spect_path).is_file()
        assert row.frames_path == f"{row.split}/{name}.spect.npz"
        assert row.multi_frame_labels_path == f"{row.split}/{name}.spect.multi-frame-labels.npy"
    # vak writes the splits in order of name, each in its own order (see the next test).
    assert list(csv.split) == sorted(csv.split)


def test_the_csv_rows_repeat_the_spectrograms_manifest(prepped):
    """The dataset's CSV and the manifest of the run that made its spectrograms agree on vak's
    columns, recording by recording (docs/differences-from-vak.md)."""
    record = json.loads((Path(prepped.dataset_path) / RECORD_NAME).read_text())
    columns = ["audio_path", "spect_path", "annot_path", "duration", "timebin_dur"]
    csv = pd.read_csv(prepped.csv_path, dtype=str).set_index("audio_path", drop=False)
    rows = {row["audio_path"]: row for row in manifest.read(record["spectrograms"])}
    assert set(csv.index) <= set(rows)
    for audio_path, row in csv.iterrows():
        assert {c: rows[audio_path][c] for c in columns} == {c: row[c] for c in columns}


def test_rows_of_a_split_are_in_vaks_order_by_label_frequency():
    """vak sorts each split by the frequency of its labels; its own CSV is the oracle."""
    for _, split_rows in VAK_CSV.groupby("split"):
        by_name = sorted(split_rows.audio_path, key=_name)
        annots = [prep_dataset.read_segments(DATA / path, "notmat") for path in
                  sorted(split_rows.annot_path, key=_name)]
        order = prep_labels.order_by_label_frequency([a.labels for a in annots])
        assert [_name(by_name[i]) for i in order] == list(split_rows.audio_path.map(_name))


def test_frame_labels_equal_vaks_per_recording(prepped):
    csv = pd.read_csv(prepped.csv_path)
    refs = {_name(p): p for p in VAK_CSV.multi_frame_labels_path}
    for path in csv.multi_frame_labels_path:
        got = np.load(Path(prepped.dataset_path) / path)
        ref = np.load(VAK_DATASET / refs[_name(path)])
        assert got.dtype == ref.dtype == np.int8
        np.testing.assert_array_equal(got, ref, err_msg=path)


def test_index_vectors_follow_the_rows_of_each_split(prepped):
    csv = pd.read_csv(prepped.csv_path)
    for split, rows in csv.groupby("split", sort=False):
        folder = Path(prepped.dataset_path) / split
        n_frames = [load_npz(folder.parent / p)["s"].shape[-1] for p in rows.frames_path]
        sample_ids, inds = np.load(folder / "sample_ids.npy"), np.load(folder / "inds_in_sample.npy")
        assert sample_ids.dtype == np.int32 and inds.dtype == np.int64
        np.testing.assert_array_equal(sample_ids, np.repeat(np.arange(len(n_frames)), n_frames))
        np.testing.assert_array_equal(inds, np.concatenate([np.arange(n) for n in n_frames]))


def test_spectrograms_in_the_splits_are_vaks(prepped, fingerprints):
    csv = pd.read_csv(prepped.csv_path)
    for frames_path in csv.frames_path:
        name = _name(frames_path)
        arrays = load_npz(Path(prepped.dataset_path) / frames_path)
        whole = REFERENCE / "tweety" / "gy6or6" / "032312" / name
        if whole.exists():
            with np.load(whole) as ref:
                assert_arrays_match(arrays, ref)
        assert_matches_fingerprint(arrays, fingerprints[f"tweety/gy6or6/032312/{name}"])


def test_splits_meet_vaks_rules(prepped):
    csv = pd.read_csv(prepped.csv_path)
    assert set(csv.split) == set(DURS)
    for split, rows in csv.groupby("split"):
        assert rows.duration.sum() >= DURS[split]
        labels = set()
        for annot_path in rows.annot_path:
            labels |= set(prep_dataset.read_segments(annot_path, "notmat").labels)
        assert labels == LABELSET, split


def test_the_seed_is_recorded_and_a_second_prep_recomputes_nothing(prepped, tmp_path):
    record = json.loads((Path(prepped.dataset_path) / "spectroflow-prep.json").read_text())
    assert record["seed"] == 7
    config = write_config(tmp_path)
    request = prep_dataset.PrepRequest.from_config(config, seed=7)
    first = prep_dataset.prep(request)
    again = prep_dataset.prep(request)
    assert first.summary.counts == {"written": 6}
    assert again.summary.counts == {"up_to_date": 6}
    assert again.dataset_path != first.dataset_path
    splits = [pd.read_csv(r.csv_path).set_index("audio_path").split.to_dict() for r in (first, again)]
    assert splits[0] == splits[1] == pd.read_csv(prepped.csv_path).set_index("audio_path").split.to_dict()


def test_recordings_skipped_for_their_labels_are_left_out_with_the_reason(tmp_path):
    data = tmp_path / "032312"
    shutil.copytree(DATA / "gy6or6" / "032312", data)
    config = write_config(tmp_path, data)
    text = config.read_text().replace("train_dur = 20\nval_dur = 10\ntest_dur = 10\n", "")
    config.write_text(text.replace("[vak.train]", "[vak.eval]").replace(
        "[vak.train.", "[vak.eval.").replace("num_epochs = 1\n", ""))
    with pytest.raises(prep_dataset.PrepError, match="labelset"):
        # vak: with "j" dropped, every gy6or6 recording holds other labels: nothing is left
        prep_dataset.prep(prep_dataset.PrepRequest.from_config(config).model_copy(
            update={"labelset": frozenset("iabcdefghk")}))
    result = prep_dataset.prep(prep_dataset.PrepRequest.from_config(config))
    csv = pd.read_csv(result.csv_path)
    assert set(csv.split) == {"test"} and len(csv) == 6
    assert (Path(result.dataset_path) / "labelmap.json").exists()


# ---- the algorithms, one by one ----------------------------------------------------------


def test_labelmap_puts_background_first_then_sorted_labels():
    assert prep_labels.labelmap({"b", "a", "10"}, map_background=True) == {
        "background": 0, "10": 1, "a": 2, "b": 3}
    assert prep_labels.labelmap({"b", "a"}, map_background=False) == {"a": 0, "b": 1}


def test_frame_labels_give_each_segment_its_nearest_time_bins():
    times = np.arange(10) * 0.1 + 0.05
    got = prep_labels.frame_labels([1, 2], np.array([0.12, 0.52]), np.array([0.33, 0.71]), times)
    np.testing.assert_array_equal(got, [0, 1, 1, 1, 0, 2, 2, 2, 0, 0])
    assert got.dtype == np.int8


def test_unlabeled_periods_are_found_before_between_and_after_segments():
    segs = prep_labels.Segments(("a", "b"), np.array([0.0, 1.0]), np.array([1.0, 2.0]))
    assert not prep_labels.has_unlabeled(segs, 2.0)
    assert prep_labels.has_unlabeled(segs, 2.5)
    assert prep_labels.has_unlabeled(prep_labels.Segments((), np.array([]), np.array([])), 1.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(5, 10), min_size=12, max_size=30), st.integers(0, 2**32 - 1))
def test_split_meets_target_durations_and_holds_every_label(durs, seed):
    # Feasible by construction: each split overshoots its target by at most one recording.
    labels = [np.array(list("ab" if i % 3 else "abc")) for i in range(len(durs))]
    total = sum(durs)
    train, val, test = total * 0.2, total * 0.1, total * 0.2
    first = prep_split.brute_force(durs, labels, {"a", "b", "c"}, train, val, test,
                                   random.Random(seed))
    assert prep_split.brute_force(durs, labels, {"a", "b", "c"}, train, val, test,
                                  random.Random(seed)) == first
    inds = [i for part in first if part for i in part]
    assert len(inds) == len(set(inds))
    for part, target in zip(first, (train, val, test), strict=True):
        assert part is not None and sum(durs[i] for i in part) >= target
        assert {lbl for i in part for lbl in labels[i]} == {"a", "b", "c"}


def test_split_durations_are_validated_as_vak_does():
    with pytest.raises(ValueError, match="greater than total duration"):
        prep_split.validate_split_durations(10, 10, 10, 25)
    with pytest.raises(ValueError, match="only val_dur"):
        prep_split.validate_split_durations(None, 5, None, 25)
    assert prep_split.validate_split_durations(10, None, -1, 25) == (10, 0, -1)


# ---- the configuration file and the command ----------------------------------------------


def test_config_gives_the_purpose_and_split_durations(tmp_path):
    cfg = vakconfig.load(write_config(tmp_path))
    assert (cfg.purpose, cfg.train_dur, cfg.val_dur, cfg.test_dur) == ("train", 20, 10, 10)
    legacy = tmp_path / "old.toml"
    legacy.write_text('[PREP]\ndata_dir = "x"\ntrain_dur = 5\n[LEARNCURVE]\n')
    assert (vakconfig.load(legacy).purpose, vakconfig.load(legacy).legacy) == ("learncurve", True)


def test_prep_command_writes_the_dataset_and_adds_its_path_to_the_config(tmp_path):
    config = write_config(tmp_path)
    before = config.read_text()
    result = CliRunner().invoke(app, ["prep", str(config), "--seed", "3"])
    assert result.exit_code == 0, result.output
    doc = tomllib.loads(config.read_text())
    path = Path(doc["vak"]["train"]["dataset"]["path"])
    assert path.is_dir() and path.parent == tmp_path / "prep"
    assert str(path) in result.output
    assert json.loads((path / "spectroflow-prep.json").read_text())["seed"] == 3
    # as vak 1.1.0 leaves it: the line added under [vak.train.dataset], nothing else changed
    vak_before = (VAK_PREP / "gy6or6_prep.before.toml").read_text().splitlines()
    vak_after = (VAK_PREP / "gy6or6_prep.toml").read_text().splitlines()
    added = [line for line in vak_after if line not in vak_before]
    assert added[0].startswith("path = ")
    after = config.read_text().splitlines()
    at = vak_after.index(added[0])
    assert after == [*before.splitlines()[:at], f'path = "{path}"', *before.splitlines()[at:]]
    assert (path / config.name).read_text() == config.read_text()
    # vak refuses to prep again into a config that names a dataset; so does spectroflow
    again = CliRunner().invoke(app, ["prep", str(config)])
    assert again.exit_code == 2 and "already" in again.output


def test_the_example_train_config_preps_a_dataset_vak_train_finds(tmp_path, monkeypatch):
    """examples/vak-train-tweety.toml as its comment says to use it: copied into the repository's
    root (here a folder with the sample data at ../shared/data) and prepped; ``vak train`` then
    needs its four tables and keys (vak 1.1.0's ``REQUIRED_KEYS``) and both folders to exist."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(DATA.resolve(), target_is_directory=True)
    root = tmp_path / "main"
    root.mkdir()
    shutil.copy(EXAMPLES / "vak-train-tweety.toml", root / "gy6or6.toml")
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["prep", "gy6or6.toml", "--seed", "1"])
    assert result.exit_code == 0, result.output
    train = tomllib.loads((root / "gy6or6.toml").read_text())["vak"]["train"]
    assert {"dataset", "model", "root_results_dir", "trainer"} <= set(train)
    dataset = Path(train["dataset"]["path"])
    assert dataset.parent == Path("prep/gy6or6") and (dataset / "metadata.json").is_file()
    assert Path(train["root_results_dir"]).is_dir()
    assert set(pd.read_csv(next(dataset.glob("*.csv"))).split) == set(DURS)


def test_prep_command_says_what_is_wrong_with_a_config(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[vak.prep]\ndata_dir = "nowhere"\noutput_dir = "out"\n')
    result = CliRunner().invoke(app, ["prep", str(config)])
    assert result.exit_code == 2
    assert "error:" in result.output


def test_a_vak_0x_config_gets_csv_path_in_its_command_table(tmp_path):
    config = tmp_path / "old.toml"
    config.write_text('[PREP]\ndata_dir = "x"\n\n[TRAIN]\nnetworks = "TweetyNet"\n')
    assert vakconfig.named_dataset(config) is None
    vakconfig.record_dataset(config, "out/ds", "out/ds/x_prep.csv")
    assert tomllib.loads(config.read_text())["TRAIN"] == {"networks": "TweetyNet",
                                                          "csv_path": "out/ds/x_prep.csv"}
    assert vakconfig.named_dataset(config) == "out/ds/x_prep.csv"


def test_recordings_in_a_bucket_make_the_same_dataset(s3, tmp_path, prepped):
    fs, bucket = s3
    upload_samples(fs, bucket)
    config = write_config(tmp_path, f"s3://{bucket}/audio/gy6or6/032312")
    result = prep_dataset.prep(prep_dataset.PrepRequest.from_config(config, seed=7))
    csv, local = pd.read_csv(result.csv_path), pd.read_csv(prepped.csv_path)
    assert list(csv.audio_path) == [f"s3://{bucket}/audio/{Path(p).relative_to(DATA)}"
                                    for p in local.audio_path]
    assert csv.annot_path.str.startswith(f"s3://{bucket}/").all()
    columns = ["duration", "timebin_dur", "split", "frames_path", "multi_frame_labels_path"]
    pd.testing.assert_frame_equal(csv[columns], local[columns])
    for path in csv.multi_frame_labels_path:
        np.testing.assert_array_equal(np.load(Path(result.dataset_path) / path),
                                      np.load(Path(prepped.dataset_path) / path))


def test_a_dataset_written_to_a_bucket_holds_the_same_files(s3, tmp_path, prepped):
    fs, bucket = s3
    config = write_config(tmp_path)
    request = prep_dataset.PrepRequest.from_config(config, seed=7).model_copy(
        update={"output_dir": f"s3://{bucket}/prep"})
    result = prep_dataset.prep(request)
    assert result.dataset_path.startswith(f"s3://{bucket}/prep/032312-vak-frame-classification-")
    local = Path(prepped.dataset_path)
    fs.invalidate_cache()
    for path in sorted(local.rglob("*")):
        if path.is_file() and not path.name.endswith(".csv"):
            rel = path.relative_to(local).as_posix()
            got = fs.cat(f"{result.dataset_path.removeprefix('s3://')}/{rel}")
            if rel == RECORD_NAME:
                assert json.loads(got)["seed"] == 7
            elif rel != "metadata.json":
                assert got == path.read_bytes(), rel


# ---- where the spectrograms are made -----------------------------------------------------


def test_prep_chooses_the_flow_as_run_does(prefect_api, tmp_path, monkeypatch):
    """The library unless --flow is given or a Prefect API is configured, as for run."""
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "no-profiles.toml"))
    by_the_flow = []
    for i, (options, api) in enumerate([([], None), (["--flow"], None), ([], api_url)]):
        if api:
            monkeypatch.setenv("PREFECT_API_URL", api)
        (tmp_path / str(i)).mkdir()
        config = write_config(tmp_path / str(i))
        result = CliRunner().invoke(app, ["prep", str(config), "--workers", "1", *options])
        assert result.exit_code == 0, result.output
        dataset = Path(tomllib.loads(config.read_text())["vak"]["train"]["dataset"]["path"])
        report = Path(json.loads((dataset / RECORD_NAME).read_text())["report"]).name
        # A flow run names its report after itself; the library's are named by time alone.
        by_the_flow.append(not re.fullmatch(r"report-\d{8}T\d{6}Z-[0-9a-f]+\.csv", report))
    assert by_the_flow == [False, True, True], "the flow for --flow and for PREFECT_API_URL, not by default"


def test_prep_with_the_flow_makes_the_same_dataset(prefect_api, tmp_path, prepped):
    config = write_config(tmp_path)
    result = CliRunner().invoke(app, ["prep", str(config), "--flow", "--seed", "7",
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    dataset = Path(tomllib.loads(config.read_text())["vak"]["train"]["dataset"]["path"])
    record = json.loads((dataset / RECORD_NAME).read_text())
    assert record["spectrogram_counts"] == {"written": 6}
    # A flow run names its report after itself; the library's are named by time alone.
    assert not re.fullmatch(r"report-\d{8}T\d{6}Z-[0-9a-f]+\.csv", Path(record["report"]).name)
    csv, local = pd.read_csv(next(dataset.glob("*.csv"))), pd.read_csv(prepped.csv_path)
    columns = ["duration", "timebin_dur", "split", "frames_path", "multi_frame_labels_path"]
    pd.testing.assert_frame_equal(csv[columns], local[columns])
    assert list(csv.audio_path) == list(local.audio_path)
    for path in csv.multi_frame_labels_path:
        np.testing.assert_array_equal(np.load(dataset / path),
                                      np.load(Path(prepped.dataset_path) / path))
