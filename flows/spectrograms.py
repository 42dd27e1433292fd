"""The spectrogram flow: discover, filter by annotations, compute on Dask, write, report.

Run it on the bundled sample data with ``python flows/spectrograms.py`` (into ``spectrograms``),
or on your own with ``python flows/spectrograms.py SOURCE DESTINATION``.
"""

# No `from __future__ import annotations`: a served flow is pickled by value into its run's
# process, and its parameters' annotations must travel as objects, not names.

import os
import sys
from pathlib import Path
from typing import Annotated

from prefect import flow
from pydantic import Field

from spectroflow.audio import AudioFormat
from spectroflow.orchestration.credentials import resolve_storage_options
from spectroflow.orchestration.ephemeral import temporary_api
from spectroflow.orchestration.run import run_request
from spectroflow.params import DaskSettings, SpectParams, labelset_to_set
from spectroflow.request import AnnotatedFiles, RunRequest, source_at

Labelset = str | list[str | int] | None


@flow(name="spectrogram-flow", log_prints=False, validate_parameters=True, persist_result=True,
      result_serializer="json")
def spectrogram_flow(
    source: str | list[str],
    destination: str,
    audio_format: AudioFormat = "wav",
    spect_params: SpectParams = SpectParams(),
    annot_format: str | None = None,
    annotations: str | list[str] | None = None,
    audio_annot_map: dict[str, str] | None = None,
    labelset: Labelset = None,
    storage_options: dict = {},  # noqa: B006 - the run form shows it; never mutated
    storage_secret: str | None = None,
    storage_block: str | None = None,
    batch_size: Annotated[int | None, Field(ge=1)] = None,
    batch_tags: list[str] = [],  # noqa: B006 - the run form shows it; never mutated
    dask: DaskSettings = DaskSettings(),
    skip_done: bool = True,
    dry_run: bool = False,
):
    """Turn recordings into vak-compatible ``.spect.npz`` files, in parallel on Dask.

    Returns a summary (counts per status, the report's URL, the failures); the run ends Failed,
    naming the files, when any file failed. (The argument descriptions below are what the
    Prefect UI shows in the run form; its first UI reads them as markdown, so placeholders are
    in capitals: ``<name>`` would be taken for an HTML tag and dropped.)

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
        storage_block: A prefect-aws block with the credentials, as BLOCK-TYPE/NAME:
            aws-credentials/NAME (keys, profile or role to assume; region; endpoint in its
            client parameters), minio-credentials/NAME or s3-bucket/NAME.
        batch_size: Files per task; default: chosen from the number of files and workers.
        batch_tags: Tags for the batch tasks: a tag concurrency limit on one (prefect
            concurrency-limit create TAG 2) caps the batches running at once across runs.
        dask: Where the work runs: a local cluster (n_workers), an existing cluster's
            address, or a cluster class such as dask_jobqueue.SLURMCluster with its
            cluster_kwargs, n_workers or adaptive scaling (adapt_minimum, adapt_maximum).
        skip_done: Leave outputs that are up to date (same source version and parameters) alone.
        dry_run: Only plan: report what a run would compute, leave up to date, skip or fail;
            compute and write nothing.
    """
    options = resolve_storage_options(storage_options, storage_secret, storage_block)
    if annot_format is not None and annotations is None and audio_annot_map is None:
        annotations = source  # searched under the source
    request = RunRequest(
        source=(AnnotatedFiles(audio_annot_map=audio_annot_map) if audio_annot_map is not None
                else source_at(source, options)),
        destination=destination, audio_format=audio_format, spect_params=spect_params,
        annot_format=annot_format, annotations=annotations,
        labelset=None if labelset is None else labelset_to_set(labelset),
        storage_options=options, skip_done=skip_done,
    )
    return run_request(request, batch_size, dask, dry_run, batch_tags)


if __name__ == "__main__":
    # The sample data is this checkout's: a default of the script, not of the flow, whose
    # signature is the run form of every deployment, on any machine.
    sample = Path(os.environ.get("SPECTROFLOW_SAMPLE_DATA",
                                 Path(__file__).resolve().parents[2] / "shared" / "data"))
    given, defaults = sys.argv[1:3], [str(sample / "birdsongrec"), "spectrograms"]
    source, destination = given + defaults[len(given):]
    with temporary_api():
        result = spectrogram_flow(source, destination)
    print(result)
