"""vak 1.1.0's frame-classification dataset (``vak prep`` from audio), written by spectroflow.

:func:`prep` makes the spectrograms with :func:`spectroflow.pipeline.run_request` into a folder
beside the datasets (``<output_dir>/spectroflow-spectrograms/<data_dir name>-<hash>/``), where
they stay up to date for the next prep, then writes what ``vak prep`` writes under
``output_dir``::

    <data_dir name>-vak-frame-classification-dataset-generated-<yymmdd_HHMMSS>/
        <data_dir name>_prep_<yymmdd_HHMMSS>.csv   # a row per recording, vak's columns
        metadata.json, labelmap.json
        spectroflow-prep.json                      # the seed, the spectrogram run's counts
        train/ val/ test/                          # (or test/ for eval, predict/ for predict)
            <recording>.spect.npz                  # copies of the spectrograms
            <recording>.spect.multi-frame-labels.npy
            sample_ids.npy, inds_in_sample.npy

Recordings in sub-folders of ``data_dir`` keep their sub-folders inside each split folder, so
names never collide (vak flattens them into one folder).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import posixpath
import random
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import __version__, manifest, outputs, pipeline, storage, vakconfig
from .. import annotations as annot_mod
from ..audio import AudioFormat
from ..params import SpectParams, labelset_to_set
from ..report import RunSummary
from ..request import Folder, RunRequest
from ..spectrogram import timebin_dur
from . import labels as labels_mod
from . import split as split_mod

logger = logging.getLogger(__name__)

Purpose = Literal["train", "eval", "predict", "learncurve"]
#: vak's timestamp in dataset and CSV names.
TIMESTAMP = "%y%m%d_%H%M%S"
#: Under ``output_dir``: the spectrograms, kept up to date from one prep to the next.
SPECTROGRAMS_DIR = "spectroflow-spectrograms"
#: In the dataset folder: what spectroflow adds to vak's files (vak's ``metadata.json`` takes
#: no other keys).
RECORD = "spectroflow-prep.json"
COLUMNS = ("audio_path", "spect_path", "annot_path", "annot_format", "duration", "timebin_dur",
           "split", "frames_path", "multi_frame_labels_path")
#: Makes a prep's spectrograms: runs the request to the end and returns its summary, having
#: updated the manifest of its destination (as :func:`spectroflow.pipeline.run_request` does).
SpectrogramRunner = Callable[[RunRequest], RunSummary]


class PrepError(ValueError):
    """The dataset cannot be made from these recordings and settings (nothing is written)."""


class PrepRequest(BaseModel):
    """A prep: the ``[vak.prep]`` settings that matter for a frame-classification dataset from
    audio, the purpose (the config's other command table) and the split's seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: str = Field(description="Folder or prefix of the recordings (and annotations).")
    output_dir: str = Field(description="Where the dataset folder is made.")
    purpose: Purpose = Field(description="The vak command the dataset is for.")
    audio_format: AudioFormat
    spect_params: SpectParams = SpectParams()
    annot_format: str | None = None
    annot_file: str | None = Field(default=None, description="One file annotating every "
                                   "recording; default: annotation files under data_dir.")
    labelset: frozenset[str] | None = None
    train_dur: float | None = None
    val_dur: float | None = None
    test_dur: float | None = None
    seed: int | None = Field(default=None, description="Seed of the split; default: drawn, "
                             "and recorded in the dataset.")
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("labelset", mode="before")
    @classmethod
    def _vak_labelset(cls, value: Any) -> Any:
        return None if value is None else labelset_to_set(value)

    @field_validator("spect_params")
    @classmethod
    def _npz_only(cls, value: SpectParams) -> SpectParams:
        if value.output_format == "zarr":
            raise ValueError("vak's dataset holds .spect.npz files: output_format zarr cannot "
                             "be used for prep")
        return value

    @classmethod
    def from_config(cls, path: str | Path, seed: int | None = None) -> PrepRequest:
        """The prep a vak config file asks for (see :func:`spectroflow.vakconfig.load`).

        Raises
        ------
        PrepError
            The config asks for what spectroflow does not make (not a frame-classification
            dataset from audio), or lacks a setting prep needs.
        """
        cfg = vakconfig.load(path)
        if cfg.dataset_type not in (None, "frame classification"):
            raise PrepError(f"{path}: dataset_type {cfg.dataset_type!r}: spectroflow prep makes "
                            "frame classification datasets only")
        if cfg.input_type not in (None, "spect") or cfg.spect_format is not None:
            raise PrepError(f"{path}: spectroflow prep makes spectrograms from audio "
                            "(input_type = \"spect\" with audio_format, no spect_format)")
        missing = [name for name in ("data_dir", "audio_format", "purpose")
                   if getattr(cfg, name) is None]
        if missing:
            raise PrepError(f"{path}: no {', '.join(missing)} (purpose: a [vak.train], "
                            "[vak.eval], [vak.predict] or [vak.learncurve] table)")
        # validated as the model's fields: a config's values are vak's forms (labelset "abc")
        return cls.model_validate(dict(
            data_dir=cfg.data_dir, output_dir=cfg.output_dir or cfg.data_dir,
            purpose=cfg.purpose, audio_format=cfg.audio_format, spect_params=cfg.spect_params,
            annot_format=cfg.annot_format, annot_file=cfg.annot_file, labelset=cfg.labelset,
            train_dur=cfg.train_dur, val_dur=cfg.val_dur, test_dur=cfg.test_dur, seed=seed))


@dataclass(frozen=True)
class PrepResult:
    """Where the dataset is, the seed of its split, its recordings per split, and the summary
    of the spectrogram run (its report lists the recordings left out, with reasons)."""

    dataset_path: str
    csv_path: str
    seed: int
    splits: dict[str, int]
    summary: RunSummary


@dataclass(frozen=True)
class _Sample:
    """A recording of the dataset: its spectrogram, time bins and segments."""

    audio_path: str
    spect_path: str
    relpath: str
    annot_path: str | None
    segments: labels_mod.Segments | None
    n_frames: int
    timebin_dur: float

    @property
    def duration(self) -> float:
        return self.n_frames * self.timebin_dur


def read_segments(where: str | Path | storage.Location, annot_format: str
                  ) -> labels_mod.Segments:
    """The segments of a file that annotates one recording (``.not.mat``, ...)."""
    (annot, _), *more = annot_mod.read(storage.as_location(str(where)) if not isinstance(
        where, storage.Location) else where, annot_format)
    if more:
        raise PrepError(f"{where} annotates {len(more) + 1} recordings; expected one")
    return _segments(annot)


def _segments(annot: Any) -> labels_mod.Segments:
    seq = annot.seq
    return labels_mod.Segments(tuple(str(label) for label in seq.labels),
                               np.asarray(seq.onsets_s, dtype=float),
                               np.asarray(seq.offsets_s, dtype=float))


def prep(request: PrepRequest, num_workers: int | None = None,
         run_spectrograms: SpectrogramRunner | None = None) -> PrepResult:
    """Make the dataset ``vak prep`` makes from ``request`` (see the module's docstring).

    Parameters
    ----------
    request : PrepRequest
        What to prep.
    num_workers : int, optional
        Processes computing spectrograms; default: one per core.
    run_spectrograms : callable, optional
        What makes the spectrograms (see :data:`SpectrogramRunner`); default: the library on
        this machine's cores, with ``num_workers`` processes.

    Returns
    -------
    PrepResult
        The dataset folder and CSV, the seed of the split, and the spectrogram run's summary.

    Raises
    ------
    PrepError
        No recording is left for the dataset, the durations or labelset cannot be split as
        asked, or the recordings have different frame durations: nothing is written under
        ``output_dir`` but the spectrograms.
    """
    if request.purpose == "learncurve":
        raise PrepError("learncurve datasets (train_set_durs) are not made yet; use a [vak.train] "
                        "table, or vak prep")
    if request.purpose != "predict" and request.labelset is None:
        raise PrepError(f"a {request.purpose} dataset needs a labelset")
    seed = secrets.randbelow(2**32) if request.seed is None else request.seed
    output = storage.Location(url=request.output_dir, options=request.storage_options)
    summary, samples = _spectrograms(request, output, run_spectrograms or (
        lambda run: pipeline.run_request(run, num_workers)))
    splits = _assign_splits(request, samples, random.Random(seed))
    labelmap = None
    if request.purpose != "predict":
        background = any(labels_mod.has_unlabeled(s.segments, s.duration) for s in samples
                         if s.segments is not None)
        assert request.labelset is not None
        labelmap = labels_mod.labelmap(set(request.labelset), map_background=background)
        if len(labelmap) > 127:
            raise PrepError(f"{len(labelmap)} classes: vak's frame labels (int8) hold 127 at most")
    name = _dir_name(request.data_dir)
    dataset, timenow = _new_dataset_folder(output, name)
    csv_name = f"{name}_prep_{timenow}.csv"
    rows = []
    for split_name in sorted(set(splits) - {"None"}):
        members = [s for s, assigned in zip(samples, splits, strict=True) if assigned == split_name]
        rows += _write_split(dataset, split_name, members, labelmap, request)
    _write_csv(dataset.join(csv_name), rows)
    frame_durs = {s.timebin_dur for s in samples}
    metadata = {"dataset_csv_filename": csv_name, "input_type": "spect",
                "frame_dur": frame_durs.pop(), "audio_format": request.audio_format,
                "spect_format": "npz"}
    dataset.join("metadata.json").write_bytes(json.dumps(metadata, indent=4).encode())
    if labelmap is not None:
        dataset.join("labelmap.json").write_bytes(json.dumps(labelmap).encode())
    counts = {s: splits.count(s) for s in sorted(set(splits) - {"None"})}
    record = {"seed": seed, "spectroflow_version": __version__, "splits": counts,
              "spectrograms": _cache(request, output).url, "report": summary.report,
              "spectrogram_counts": summary.counts, "request": request.model_dump(
                  mode="json", exclude={"storage_options"})}
    dataset.join(RECORD).write_bytes(json.dumps(record, indent=2).encode() + b"\n")
    logger.info("dataset %s: %s", dataset.url, counts)
    return PrepResult(dataset.url, dataset.join(csv_name).url, seed, counts, summary)


def _dir_name(url: str) -> str:
    return posixpath.basename(url.replace("\\", "/").rstrip("/"))


def _cache(request: PrepRequest, output: storage.Location) -> storage.Location:
    """The spectrograms' folder for ``data_dir``: named for it, and a hash of its absolute
    location so that two data_dirs of the same name never share one."""
    anchored = request.data_dir if "://" in request.data_dir else str(
        Path(request.data_dir).absolute())
    digest = hashlib.sha256(anchored.encode()).hexdigest()[:8]
    return output.join(f"{SPECTROGRAMS_DIR}/{_dir_name(request.data_dir)}-{digest}")


def _spectrograms(request: PrepRequest, output: storage.Location, runner: SpectrogramRunner
                  ) -> tuple[RunSummary, list[_Sample]]:
    """Make (or reuse) the spectrograms; the recordings that have one, in vak's order (of
    their spectrogram files' names), with their time bins and segments."""
    cache = _cache(request, output)
    annotations = None
    if request.annot_format is not None:
        annotations = request.annot_file or request.data_dir
    run = RunRequest(source=Folder(folder=request.data_dir), destination=cache.url,
                     audio_format=request.audio_format, spect_params=request.spect_params,
                     annot_format=request.annot_format, annotations=annotations,
                     labelset=None if request.purpose == "predict" else request.labelset,
                     storage_options=request.storage_options).anchored()
    summary = runner(run)
    if summary.not_done or summary.manifest is None:
        raise PrepError(
            f"the spectrograms' run stopped ({summary.stopped}) with {summary.not_done} "
            "recordings not done: run prep again to finish them" if summary.not_done else
            f"the spectrograms' manifest under {run.destination} could not be written: see the "
            "run's log")
    # The run saw every recording under data_dir, and its rows say which have a spectrogram now.
    rows = [row for row in manifest.read(run.output) if row["status"] == "ok"]
    if not rows:
        raise PrepError(
            f"no recording under {request.data_dir} is left for the dataset: "
            + ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
            + (f" (e.g. {summary.failed[0][0]}: {summary.failed[0][1]})" if summary.failed
               else " (recordings with labels outside the labelset are skipped)")
            + f"; report: {summary.report}")
    root = run.output.url.rstrip("/") + "/"
    rows.sort(key=lambda row: row["spect_path"].removeprefix(root))
    segments = _segments_of(rows, request) if request.purpose != "predict" else {}
    samples = []
    for row in rows:
        times = outputs.read_times(run.output.at(row["spect_path"]), request.spect_params)
        samples.append(_Sample(
            audio_path=row["audio_path"], spect_path=row["spect_path"],
            relpath=row["spect_path"].removeprefix(root), annot_path=row["annot_path"] or None,
            segments=segments.get(row["audio_path"]), n_frames=len(times),
            timebin_dur=timebin_dur(times)))
    durs = sorted({s.timebin_dur for s in samples})
    if len(durs) > 1:
        firsts = [next(s.audio_path for s in samples if s.timebin_dur == d) for d in durs]
        raise PrepError(f"the recordings have {len(durs)} frame durations, {durs} s (e.g. "
                        f"{', '.join(firsts)}): vak's dataset needs one (same sampling rate and "
                        "step_size)")
    return summary, samples


def _segments_of(rows: list[dict], request: PrepRequest) -> dict[str, labels_mod.Segments]:
    """Each recording's segments, from the annotation file the spectrogram run paired it with."""
    assert request.annot_format is not None
    by_file: dict[str, list[str]] = {}
    for row in rows:
        if row["annot_path"]:
            by_file.setdefault(row["annot_path"], []).append(row["audio_path"])
    out: dict[str, labels_mod.Segments] = {}
    for annot_path, audio_paths in by_file.items():
        read = annot_mod.read(storage.Location(url=annot_path, options=request.storage_options),
                              request.annot_format)
        wrapped = [annot_mod.Annotated(annot_mod.audio_stem(notated or annot_path),
                                       frozenset(), annot_path, notated)
                   for _, notated in read]
        matched, _ = annot_mod.match(audio_paths, wrapped)
        for audio_path, found in matched.items():
            if isinstance(found, str):
                raise PrepError(f"{audio_path}: {found}")
            out[audio_path] = _segments(read[wrapped.index(found)][0])
    return out


def _assign_splits(request: PrepRequest, samples: list[_Sample], rng: random.Random
                   ) -> list[str]:
    """Each sample's split, as vak's ``assign_samples_to_splits`` decides it."""
    durs = (request.train_dur, request.val_dur, request.test_dur)
    if request.purpose == "eval":
        return ["test"] * len(samples)
    if request.purpose == "predict":
        return ["predict"] * len(samples)
    if all(d is None for d in durs):
        # vak 1.1.0 names no split here and then fails; every recording trains, as vak 0.x did
        return ["train"] * len(samples)
    if request.train_dur and not request.val_dur and not request.test_dur:
        raise PrepError("a duration for the training set alone cannot be split: remove "
                        "train_dur (everything trains) or give test_dur (and val_dur)")
    assert request.labelset is not None
    labels = [np.asarray(s.segments.labels if s.segments else ()) for s in samples]
    try:
        train, val, test = split_mod.brute_force(
            [s.duration for s in samples], labels, set(request.labelset), request.train_dur,
            request.val_dur, request.test_dur, rng)
    except ValueError as exc:
        raise PrepError(f"cannot split: {exc}") from exc
    assigned = ["None"] * len(samples)
    for split_name, inds in zip(split_mod.SPLITS, (train, val, test), strict=True):
        for ind in inds or []:
            assigned[ind] = split_name
    return assigned


def _save_npy(where: storage.Location, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    where.write_bytes(buf.getvalue())


def _write_split(dataset: storage.Location, split_name: str, members: Sequence[_Sample],
                 labelmap: dict[str, int] | None, request: PrepRequest) -> list[dict]:
    """The split's folder (spectrograms, frame labels, index vectors); its CSV rows, in vak's
    order."""
    if labelmap is not None:
        order = labels_mod.order_by_label_frequency(
            [m.segments.labels if m.segments else () for m in members])
        members = [members[i] for i in order]
    rows = []
    for sample in members:
        frames_path = f"{split_name}/{sample.relpath}"
        source = dataset.at(sample.spect_path)
        _copy(source, dataset.join(frames_path))
        labels_path = None
        if labelmap is not None and sample.segments is not None:
            times = outputs.read_times(source, request.spect_params)
            segs = sample.segments
            labels_path = frames_path.removesuffix(".npz") + ".multi-frame-labels.npy"
            _save_npy(dataset.join(labels_path), labels_mod.frame_labels(
                [labelmap[label] for label in segs.labels], segs.onsets_s, segs.offsets_s,
                times, background=labelmap.get(labels_mod.BACKGROUND, 0)))
        rows.append({"audio_path": sample.audio_path, "spect_path": sample.spect_path,
                     "annot_path": sample.annot_path,
                     "annot_format": request.annot_format or "none",
                     "duration": sample.duration, "timebin_dur": sample.timebin_dur,
                     "split": split_name, "frames_path": frames_path,
                     "multi_frame_labels_path": labels_path})
    n_frames = [m.n_frames for m in members]
    folder = dataset.join(split_name)
    _save_npy(folder.join("sample_ids.npy"),
              np.repeat(np.arange(len(members), dtype=np.int32), n_frames))
    _save_npy(folder.join("inds_in_sample.npy"),
              np.concatenate([np.arange(n) for n in n_frames]))
    return rows


def _copy(source: storage.Location, target: storage.Location) -> None:
    with source.open_input() as src:
        def write(fh: BinaryIO) -> None:
            shutil.copyfileobj(src, fh)

        target.write_with(write)


def _write_csv(where: storage.Location, rows: list[dict]) -> None:
    """vak's CSV as pandas writes it: floats by their repr, no value as an empty field."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row[c] is None else repr(row[c]) if isinstance(row[c], float)
                         else row[c] for c in COLUMNS])
    where.write_bytes(out.getvalue().encode())


def _new_dataset_folder(output: storage.Location, name: str) -> tuple[storage.Location, str]:
    """The dataset folder named as vak names it, for a time no other dataset here has."""
    while True:
        timenow = datetime.now().strftime(TIMESTAMP)
        dataset = output.join(f"{name}-vak-frame-classification-dataset-generated-{timenow}")
        if not dataset.exists():
            return dataset, timenow
        time.sleep(0.25)  # two preps within a second: vak's name holds seconds only
