"""The spectrogram flow: discover, filter by annotations, compute on Dask, write, report.

Run it on the bundled sample data with ``python flows/spectrograms.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.blocks.system import Secret
from prefect.states import Completed, Failed
from pydantic import Field

from spectroflow import plan as plan_mod
from spectroflow import report, storage
from spectroflow.params import AudioFormat, DaskSettings, SpectParams
from spectroflow.tasks import plan_task, report_task, spectrogram_batch, task_runner

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
    source: Annotated[
        str | list[str],
        Field(description="Folder or prefix searched recursively (local path or URL such as "
              "s3://bucket/audio), one audio file, or a list of audio files."),
    ] = str(SAMPLE_DATA / "birdsongrec"),
    destination: Annotated[
        str, Field(description="Folder or prefix for the .spect.npz files; the source tree is mirrored.")
    ] = "spectrograms",
    audio_format: Annotated[AudioFormat, Field(description="wav, flac, ogg or cbin.")] = "wav",
    spect_params: Annotated[SpectParams, Field(description="vak's spectrogram parameters.")] = SpectParams(),
    annot_format: Annotated[
        str | None, Field(description="crowsetta format of the annotations (e.g. notmat); none: no filtering.")
    ] = None,
    annotations: Annotated[
        str | list[str] | None,
        Field(description="Annotation file(s) or a folder of them; default: searched under source."),
    ] = None,
    audio_annot_map: Annotated[
        dict[str, str] | None, Field(description="Audio URL -> annotation file URL, instead of source.")
    ] = None,
    labelset: Annotated[
        Labelset, Field(description="vak labelset: 'abc', ['en', 'ab'], 'range: 1-3, 5'. Files with "
                        "other labels are skipped.")
    ] = None,
    storage_options: Annotated[
        dict, Field(description="fsspec options (no secrets: use storage_secret).")
    ] = {},
    storage_secret: Annotated[
        str | None, Field(description="Name of a Prefect Secret block holding credentials as JSON "
                          "storage options, e.g. {\"key\": ..., \"secret\": ...}.")
    ] = None,
    batch_size: Annotated[
        int | None, Field(ge=1, description="Files per task; default: chosen from the file count.")
    ] = None,
    dask: Annotated[DaskSettings, Field(description="Local cluster or existing cluster address.")] = DaskSettings(),
    skip_done: Annotated[bool, Field(description="Leave outputs that are up to date alone.")] = True,
):
    """Turn recordings into vak-compatible ``.spect.npz`` files, in parallel on Dask.

    Returns a summary (counts per status, the report's URL, the failures); the run ends Failed,
    naming the files, when any file failed.
    """
    logger = get_run_logger()
    options = resolve_storage_options(storage_options, storage_secret)
    sources = dict(audio_dir=None, audio_files=None, annot_list=None, audio_annot_map=audio_annot_map)
    if audio_annot_map is None:
        if isinstance(source, list):
            sources["audio_files"] = source
        else:
            fs, path = storage.url_to_fs(source, options)
            sources["audio_dir" if fs.isdir(path) else "audio_files"] = source if fs.isdir(path) else [source]
        if annot_format is not None:
            location = annotations if annotations is not None else source
            sources["annot_list"] = plan_mod.annotation_files(location, annot_format, options)

    params, plan = plan_task(
        audio_format=audio_format, spect_params=spect_params, output_dir=destination,
        annot_format=annot_format, labelset=labelset, storage_options=options,
        skip_done=skip_done, **sources,
    )
    results = list(plan.decided)
    if plan.work:
        size = batch_size or plan_mod.auto_batch_size(len(plan.work), dask.n_workers or os.cpu_count() or 1)
        chunks = plan_mod.batches(plan.work, size)
        logger.info("computing %d files in %d tasks of up to %d", len(plan.work), len(chunks), size)
        with task_runner(dask) as runner:
            futures = [
                runner.submit(
                    spectrogram_batch,
                    {"batch": i, "items": chunk, "destination": destination,
                     "audio_format": audio_format, "params": params, "storage_options": options},
                )
                for i, chunk in enumerate(chunks)
            ]
            for chunk, future in zip(chunks, futures):
                state = future.wait() or future.state
                if state.is_completed():
                    results.extend(future.result())
                else:
                    message = state.message or state.type.value
                    logger.error("a batch of %d files did not finish: %s", len(chunk), message)
                    results.extend(
                        report.FileResult(item.source, "failed", f"batch did not finish: {message}")
                        for item in chunk
                    )
    url = report_task(results, destination, options)
    summary = report.summarize(results, url)
    logger.info("run finished: %s", summary)
    payload = {"counts": summary.counts, "report": url, "failed": summary.failed[:100],
               "outputs": len(summary.outputs)}
    if summary.failed:
        names = ", ".join(src for src, _ in summary.failed[:10])
        more = f" and {len(summary.failed) - 10} more" if len(summary.failed) > 10 else ""
        return Failed(message=f"{len(summary.failed)} files failed: {names}{more}; see {url}",
                      data=payload)
    return Completed(message=str(summary), data=payload)


if __name__ == "__main__":
    result = spectrogram_flow(*sys.argv[1:3])
    print(result)
