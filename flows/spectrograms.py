"""The spectrogram flow: discover, filter by annotations, compute on Dask, write, report.

Run it on the bundled sample data with ``python flows/spectrograms.py``.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.blocks.system import Secret
from prefect.states import Completed, Failed
from pydantic import Field

from spectroflow import plan as plan_mod
from spectroflow import progress, report, storage
from spectroflow.ephemeral import temporary_api
from spectroflow.params import AudioFormat, DaskSettings, SpectParams
from spectroflow.tasks import Preview, compute_on_dask, plan_task, publish_task, report_task

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

Labelset = str | list[str | int] | None


def resolve_storage_options(storage_options: dict, secret_block: str | None) -> dict:
    """Merge the JSON held in a Prefect Secret block (credentials) into ``storage_options``."""
    if not secret_block:
        return dict(storage_options)
    secret = Secret.load(secret_block).get()
    if not isinstance(secret, dict):
        raise ValueError(f"Secret block {secret_block!r} must hold a JSON object of storage options")
    return {**storage_options, **secret}


@flow(name="spectrogram-flow", log_prints=False, validate_parameters=True)
def spectrogram_flow(
    source: str | list[str] = str(SAMPLE_DATA / "birdsongrec"),
    destination: str = "spectrograms",
    audio_format: AudioFormat = "wav",
    spect_params: SpectParams = SpectParams(),
    annot_format: str | None = None,
    annotations: str | list[str] | None = None,
    audio_annot_map: dict[str, str] | None = None,
    labelset: Labelset = None,
    storage_options: dict = {},
    storage_secret: str | None = None,
    batch_size: Annotated[int | None, Field(ge=1)] = None,
    dask: DaskSettings = DaskSettings(),
    skip_done: bool = True,
):
    """Turn recordings into vak-compatible ``.spect.npz`` files, in parallel on Dask.

    Returns a summary (counts per status, the report's URL, the failures); the run ends Failed,
    naming the files, when any file failed. (The argument descriptions below are what the
    Prefect UI shows in the run form.)

    Args:
        source: Folder or prefix searched recursively (a local path or a URL such as
            s3://bucket/audio), one audio file, or a list of audio files.
        destination: Folder or prefix for the .spect.npz files; the source tree is mirrored below it.
        audio_format: wav, flac, ogg or cbin.
        spect_params: vak's spectrogram parameters (fft_size, step_size, freq_cutoffs, thresh,
            transform_type, array keys).
        annot_format: crowsetta format of the annotations (e.g. notmat); leave empty for no
            annotation filtering.
        annotations: Annotation file(s) or a folder of them; default: searched under source.
        audio_annot_map: Audio URL -> annotation file URL, used instead of source.
        labelset: vak labelset, e.g. 'abc', ['en', 'ab'] or 'range: 1-3, 5'; recordings with
            other labels are skipped.
        storage_options: fsspec options such as an endpoint (no secrets here: see storage_secret).
        storage_secret: Name of a Prefect Secret block holding credentials as JSON storage
            options, e.g. {"key": "...", "secret": "..."}.
        batch_size: Files per task; default: chosen from the number of files and workers.
        dask: A local cluster (n_workers) or an existing cluster's address.
        skip_done: Leave outputs that are up to date (same source version and parameters) alone.
    """
    options = resolve_storage_options(storage_options, storage_secret)
    sources = dict(audio_dir=None, audio_files=None, annot_list=None, audio_annot_map=audio_annot_map)
    if audio_annot_map is None:
        if isinstance(source, list):
            sources["audio_files"] = source
        else:
            found = storage.kind(source, options)
            if found is None:
                raise storage.StorageError(f"source {source!r} does not exist (no folder, prefix "
                                           "or file of that name)")
            sources["audio_dir" if found == "folder" else "audio_files"] = (
                source if found == "folder" else [source])
        if annot_format is not None:
            location = annotations if annotations is not None else source
            sources["annot_list"] = plan_mod.annotation_files(location, annot_format, options)
    return run_planned(
        dict(audio_format=audio_format, spect_params=spect_params, output_dir=destination,
             annot_format=annot_format, labelset=labelset, storage_options=options,
             skip_done=skip_done, **sources),
        batch_size, dask,
    )


def run_planned(prepare_kwargs: dict, batch_size: int | None, dask: DaskSettings):
    """The body shared by the flows: plan, compute the batches on Dask, report, decide the state.

    ``prepare_kwargs`` are :func:`spectroflow.pipeline.prepare`'s arguments.
    """
    logger = get_run_logger()
    destination = prepare_kwargs["output_dir"]
    options = prepare_kwargs["storage_options"]
    params, plan = plan_task(**prepare_kwargs)
    preview = Preview(params, options)
    with report.ResultLog() as log:
        log.add(plan.decided)

        def finished(results: list[report.FileResult]) -> None:
            log.add(results)
            preview.offer(results)

        if plan.work:
            computing = compute_on_dask(
                plan.work, dask, batch_size, on_batch=finished, destination=destination,
                audio_format=prepare_kwargs["audio_format"], params=params, storage_options=options,
            )
        else:
            logger.info("nothing to compute: every recording is up to date, skipped or failed")
            progress.update(0, 0)
            computing = nullcontext()
        with computing:  # the cluster shuts down while the report is written
            url = report_task(log, destination, options)
            summary = log.summary(url)
            logger.info("run finished: %s", summary)
            publish_task(log, summary, destination, preview, options)
    counts = summary.counts
    payload = {"counts": counts, "report": url, "failed": summary.failed[:100],
               "outputs": counts.get("written", 0) + counts.get("up_to_date", 0)}
    if not summary.ok:
        names = ", ".join(src for src, _ in summary.failed[:10])
        n_failed = counts["failed"]
        more = f" and {n_failed - 10} more" if n_failed > 10 else ""
        return Failed(message=f"{n_failed} files failed: {names}{more}; see {url}", data=payload)
    return Completed(message=str(summary), data=payload)


if __name__ == "__main__":
    with temporary_api():
        result = spectrogram_flow(*sys.argv[1:3])
    print(result)
