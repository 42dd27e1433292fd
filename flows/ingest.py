"""The ingestion flow: compute spectrograms for the recordings that have no up-to-date output yet.

New recordings keep arriving in a bucket; run this every few minutes (see ``deployments/``), or
from an event naming the new objects. An output is up to date when it was made from the same
object version (ETag, or size and modification time) with the same parameters; the record of
that is a provenance marker written after the output (see :mod:`spectroflow.provenance`), so a
run when nothing is new costs listings, and a rerun after a crash recomputes nothing finished.
"""

# No `from __future__ import annotations`: a served flow is pickled by value into its run's
# process, and its parameters' annotations must travel as objects, not names.

import sys
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from spectroflow.audio import AudioFormat
from spectroflow.orchestration.credentials import resolve_storage_options
from spectroflow.orchestration.ephemeral import temporary_api
from spectroflow.orchestration.run import run_request
from spectroflow.params import DaskSettings, SpectParams
from spectroflow.request import Files, Folder, RunRequest, Source


@flow(name="ingest-flow", log_prints=False, validate_parameters=True, persist_result=True,
      result_serializer="json")
def ingest_flow(
    source: str,
    destination: str,
    audio_format: AudioFormat = "wav",
    spect_params: SpectParams = SpectParams(),
    objects: list[str] | None = None,
    storage_options: dict = {},  # noqa: B006 - the run form shows it; never mutated
    storage_secret: str | None = None,
    storage_block: str | None = None,
    batch_size: Annotated[int | None, Field(ge=1)] = None,
    batch_tags: list[str] = [],  # noqa: B006 - the run form shows it; never mutated
    dask: DaskSettings = DaskSettings(),
    dry_run: bool = False,
):
    """Compute the outputs that are missing or stale under ``destination``, and nothing else.

    Args:
        source: Folder or prefix that receives recordings, e.g. s3://bucket/audio.
        destination: Folder or prefix for the .spect.npz files (the source tree is mirrored).
        audio_format: wav, flac, ogg or cbin.
        spect_params: vak's spectrogram parameters.
        objects: Only these objects (full URLs), e.g. those an event names; those not under
            source are ignored. Default: everything under source.
        storage_options: fsspec options such as an endpoint (no secrets here: see storage_block
            and storage_secret).
        storage_secret: Name of a Prefect Secret block holding credentials as JSON storage options.
        storage_block: A prefect-aws block with the credentials, as BLOCK-TYPE/NAME:
            aws-credentials/NAME, minio-credentials/NAME or s3-bucket/NAME.
        batch_size: Files per task; default: automatic.
        batch_tags: Tags for the batch tasks: a tag concurrency limit on one (prefect
            concurrency-limit create TAG 2) caps the batches running at once across runs.
        dask: Where the work runs: a local cluster (n_workers), an existing cluster's
            address, or a cluster class such as dask_jobqueue.SLURMCluster with its
            cluster_kwargs, n_workers or adaptive scaling (adapt_minimum, adapt_maximum).
        dry_run: Only plan: report what a run would compute; compute and write nothing.
    """
    options = resolve_storage_options(storage_options, storage_secret, storage_block)
    sources: Source = Folder(folder=source)
    if objects is not None:
        # An event's batch may name objects of the bucket outside the source, or of other
        # formats: those are not this deployment's.
        under = source.rstrip("/") + "/"
        named = [str(o) for o in objects]
        wanted = [o for o in named if o.startswith(under) and o.lower().endswith(f".{audio_format}")]
        if len(wanted) < len(named):
            get_run_logger().info("ignoring %d of the %d objects named: not .%s recordings under "
                                  "%s", len(named) - len(wanted), len(named), audio_format, source)
        sources = Files(files=wanted, root=source)
    # A run of an event's objects leaves its rows in a large manifest's journal: the runs
    # over the whole source (the schedule's) merge them.
    request = RunRequest(source=sources, destination=destination, audio_format=audio_format,
                         spect_params=spect_params, storage_options=options,
                         defer_manifest=objects is not None)
    return run_request(request, batch_size, dask, dry_run, batch_tags)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python flows/ingest.py SOURCE DESTINATION")
    source, destination = sys.argv[1:3]
    with temporary_api():
        print(ingest_flow(source, destination))
