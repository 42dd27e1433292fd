"""The spectrogram flow: discover, filter by annotations, compute on Dask, write, report.

Run it on the bundled sample data with ``python flows/spectrograms.py``.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.blocks.core import Block
from prefect.blocks.system import Secret
from prefect.states import Cancelled, Completed, Failed
from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket
from pydantic import Field

from spectroflow import plan as plan_mod
from spectroflow import progress, report, storage
from spectroflow.ephemeral import temporary_api
from spectroflow.params import AudioFormat, DaskSettings, SpectParams
from spectroflow.tasks import (
    Preview,
    compute_on_dask,
    plan_task,
    publish_task,
    report_task,
    stop_requests,
)

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

Labelset = str | list[str | int] | None


def resolve_storage_options(storage_options: dict, secret_block: str | None,
                            storage_block: str | None = None) -> dict:
    """``storage_options`` with the credentials of Prefect blocks merged in.

    Parameters
    ----------
    storage_options : dict
        fsspec options given as a parameter (an endpoint, no secrets).
    secret_block : str or None
        Name of a ``Secret`` block holding a JSON object of storage options.
    storage_block : str or None
        ``<block type>/<name>`` of a prefect-aws block: ``aws-credentials/...``,
        ``minio-credentials/...`` or ``s3-bucket/...`` (its credentials). Its keys (or, with
        ``assume_role_arn``, the role's temporary keys, valid as long as STS grants them: an hour
        by default), region and ``aws_client_parameters`` (endpoint, TLS, botocore config)
        become s3fs options.

    Returns
    -------
    dict
        The options for :mod:`spectroflow.storage`: the block's over ``storage_options``, the
        secret's over both (``client_kwargs`` and ``config_kwargs`` are merged key by key).
    """
    options = dict(storage_options)

    def merge(extra: dict) -> None:
        for name in ("client_kwargs", "config_kwargs"):
            if name in extra:
                extra = {**extra, name: {**options.get(name, {}), **extra[name]}}
        options.update(extra)

    if storage_block:
        block = Block.load(storage_block)
        if isinstance(block, S3Bucket):
            block = block.credentials
        if not isinstance(block, AwsCredentials | MinIOCredentials):
            raise ValueError(
                f"storage_block {storage_block!r} is a {type(block).__name__}; expected an "
                "AwsCredentials, MinIOCredentials or S3Bucket block (e.g. 'aws-credentials/lab')")
        session = block.get_boto3_session()  # assumes the role, if the block names one
        client = block.aws_client_parameters
        extra: dict = {"client_kwargs": {
            name: value for name, value in
            [("region_name", session.region_name), ("endpoint_url", client.endpoint_url),
             ("use_ssl", client.use_ssl), ("api_version", client.api_version),
             ("verify", str(client.verify_cert_path) if client.verify_cert_path else client.verify)]
            if value is not None}}
        if client.config:
            extra["config_kwargs"] = dict(client.config)
        found = session.get_credentials()
        if found is not None:
            keys = found.get_frozen_credentials()
            extra |= {"key": keys.access_key, "secret": keys.secret_key}
            if keys.token:
                extra["token"] = keys.token
        merge(extra)
    if secret_block:
        secret = Secret.load(secret_block).get()
        if not isinstance(secret, dict):
            raise ValueError(f"Secret block {secret_block!r} must hold a JSON object of storage "
                             "options")
        merge(secret)
    return options


@flow(name="spectrogram-flow", log_prints=False, validate_parameters=True, persist_result=True,
      result_serializer="json")
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
    storage_block: str | None = None,
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
        storage_options: fsspec options such as an endpoint (no secrets here: see storage_block
            and storage_secret).
        storage_secret: Name of a Prefect Secret block holding credentials as JSON storage
            options, e.g. {"key": "...", "secret": "..."}.
        storage_block: A prefect-aws block with the credentials, as <block type>/<name>:
            aws-credentials/<name> (keys, profile or role to assume; region; endpoint in its
            client parameters), minio-credentials/<name> or s3-bucket/<name>.
        batch_size: Files per task; default: chosen from the number of files and workers.
        dask: A local cluster (n_workers) or an existing cluster's address.
        skip_done: Leave outputs that are up to date (same source version and parameters) alone.
    """
    options = resolve_storage_options(storage_options, storage_secret, storage_block)
    sources = dict(audio_dir=None, audio_files=None, annot_list=None, audio_annot_map=audio_annot_map)
    if audio_annot_map is None:
        if isinstance(source, list):
            sources["audio_files"] = source
        else:
            found = storage.source_kind(source, options)
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

    ``prepare_kwargs`` are :func:`spectroflow.pipeline.prepare`'s arguments. After planning, the
    first Ctrl-C (SIGINT) or cancelling the run in Prefect stops it early: no more batches start,
    those running return what they finished, the report lists it, and the run ends Cancelled
    with the files not done counted; a rerun computes them. A second Ctrl-C interrupts at once.
    """
    logger = get_run_logger()
    destination = prepare_kwargs["output_dir"]
    options = prepare_kwargs["storage_options"]
    params, plan = plan_task(**prepare_kwargs)
    preview = Preview(params, options)
    computed = 0
    with report.ResultLog() as log, stop_requests() as stop:
        log.add(plan.decided)

        def finished(results: list[report.FileResult]) -> None:
            nonlocal computed
            computed += len(results)
            log.add(results)
            preview.offer(results)

        if plan.work:
            computing = compute_on_dask(
                plan.work, dask, batch_size, on_batch=finished, stop=stop, destination=destination,
                audio_format=prepare_kwargs["audio_format"], params=params, storage_options=options,
            )
        else:
            logger.info("nothing to compute: every recording is up to date, skipped or failed")
            progress.update(0, 0)
            computing = nullcontext()
        with computing:  # the cluster shuts down while the report is written
            written = report_task(log, destination, options, return_state=True)
            # A report that cannot be written is reported; the summary is returned all the same.
            url = written.result() if written.is_completed() else None
            summary = log.summary(url, None if url else written.message or written.name)
            not_done = len(plan.work) - computed
            # A Ctrl-C once every file is done (while the report is written) stops nothing; a
            # run cancelled in Prefect ends Cancelled whatever is left (it cannot end Completed).
            stopped = stop.requested and (not_done > 0 or stop.reason.startswith("cancelled"))
            if stopped:
                logger.warning("run stopped (%s) with %d of %d files not done: %s", stop.reason,
                               not_done, len(plan.work), summary)
            else:
                logger.info("run finished: %s", summary)
            publish_task(log, summary, destination, preview, options)
    counts = summary.counts
    payload = {"counts": counts, "report": url, "failed": summary.failed[:100],
               "outputs": counts.get("written", 0) + counts.get("up_to_date", 0),
               "stopped": stop.reason if stopped else None, "not_done": not_done}
    if stopped:
        return Cancelled(message=f"{stop.reason}: {not_done} of {len(plan.work)} files not done "
                                 f"(a rerun computes them); {summary}", data=payload)
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
