"""Serve spectroflow's deployments from this machine: no work pool, no worker, one process.

    prefect server start                      # in another terminal: the API, UI and scheduler
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python deployments/serve.py --source s3://lab-bucket/audio --destination s3://lab-bucket/spect

This registers three deployments and runs whatever they schedule or are asked for:

- ``spectrogram-flow/nightly``: the whole source every night at 02:00 (outputs that are up to
  date are left alone, so a night with nothing new costs listings);
- ``spectrogram-flow/on-demand``: no schedule; start it from the UI (Deployments -> on-demand ->
  Run -> Custom run) with the parameter form (source and destination are required: the form
  shows the served ones, which a run may change), or ``prefect deployment run
  spectrogram-flow/on-demand --param source=... --param destination=...``;
- ``ingest-flow/ingest``: new or changed objects every 5 minutes (the whole source listed),
  and a run for each ``spectroflow.audio.batch`` event naming objects under the source
  (``spectroflow relay`` makes one from the bucket notifications of a few seconds), which
  computes those objects alone (see ``deployments/README.md``). With ``--debounce SECONDS``, a
  burst of ``spectroflow.audio.created`` events under the source makes one run instead, that
  many seconds after its first event, which lists the whole source: fewer runs, each later and
  each a listing.

Runs compute on a Dask cluster that this process starts once and keeps warm (its workers have
imported what the tasks need before the first run comes), so a run pays no cluster start:
``--workers`` sizes it, ``--dask-address`` names an existing cluster instead. A run whose ``dask``
parameter asks for a cluster of its own (n_workers, cluster_class, ...) gets one.

Schedules need a real server (``prefect server start``); the temporary API a flow starts by
itself registers deployments but never runs their schedules.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

from prefect import Flow
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import TerminationSignal
from prefect.runner import Runner
from prefect.settings import PREFECT_API_URL

from spectroflow.flows.ingest import ingest_flow
from spectroflow.flows.spectrograms import spectrogram_flow
from spectroflow.orchestration.cluster import warm_cluster
from spectroflow.orchestration.forkserver import flow_runs_forked
from spectroflow.orchestration.relay import AUDIO_BATCH, AUDIO_CREATED
from spectroflow.params import DaskSettings

TAGS = ["spectroflow"]


def served(
    source: str,
    destination: str,
    audio_format: str = "wav",
    nightly_cron: str = "0 2 * * *",
    ingest_cron: str = "*/5 * * * *",
    debounce: float | None = None,
) -> list[tuple[Flow, dict[str, Any]]]:
    """Each deployment as its flow and the arguments of :meth:`prefect.Flow.to_deployment`;
    ``debounce``: see :func:`debounced_recordings`."""
    common = {"source": source, "destination": destination, "audio_format": audio_format}
    return [
        (spectrogram_flow, dict(
            name="nightly", cron=nightly_cron, parameters=common, tags=[*TAGS, "scheduled"],
            description="Spectrograms for the whole source; up-to-date outputs are left alone.",
        )),
        (spectrogram_flow, dict(
            name="on-demand", parameters=common, tags=[*TAGS, "manual"],
            description="Start from the UI or the CLI with your own parameters.",
        )),
        (ingest_flow, dict(
            name="ingest", cron=ingest_cron, parameters=common, tags=[*TAGS, "ingest"],
            description=f"New or changed recordings: all of them every few minutes, and those "
                        f"each {AUDIO_BATCH} event names." if debounce is None else
                        f"New or changed recordings: all of them every few minutes, and "
                        f"{debounce:g} s after a burst of {AUDIO_CREATED} events begins.",
            triggers=[new_recordings(source) if debounce is None
                      else debounced_recordings(source, debounce)],
        )),
    ]


def deployments(*args: Any, **kwargs: Any) -> list:
    """The deployments of :func:`served` (same arguments) as ``RunnerDeployment`` objects."""
    return [flow.to_deployment(**options) for flow, options in served(*args, **kwargs)]


def new_recordings(source: str) -> DeploymentEventTrigger:
    """The ingest deployment's trigger: a run for each batch of new objects under ``source``.

    ``spectroflow relay`` names the objects that a few seconds of notifications bring in one
    :data:`~spectroflow.orchestration.relay.AUDIO_BATCH` event, whose related resources are
    the folders holding them; a batch with an object under ``source`` starts a run over the
    batch's objects (the run leaves those outside ``source`` alone). Runs of different batches
    may overlap (``--limit`` caps the runs at once); no run lists the source.
    """
    return DeploymentEventTrigger(
        name="new recordings", expect={AUDIO_BATCH},
        match_related={"prefect.resource.role": "folder",
                       "prefect.resource.id": source.rstrip("/")},
        threshold=1, parameters={"objects": BATCH_OBJECTS},
    )


def debounced_recordings(source: str, debounce: float) -> DeploymentEventTrigger:
    """The ingest deployment's trigger with ``--debounce``: a burst of events under ``source``
    makes one run, which lists the source.

    The first :data:`~spectroflow.orchestration.relay.AUDIO_CREATED` event fires it, and its run
    is scheduled ``debounce`` seconds later; events of those seconds fire nothing more
    (Prefect's window, ``within``). The run, with the deployment's parameters (no ``objects``),
    lists the source when it starts: it computes the objects of every event in the window, and
    any other new object.
    """
    window = timedelta(seconds=debounce)
    return DeploymentEventTrigger(
        name="new recordings", expect={AUDIO_CREATED},
        match={"prefect.resource.id": source.rstrip("/") + "/*"},
        threshold=1, within=window, schedule_after=window,
    )


#: The ``objects`` parameter of a run started by a batch event: the event's objects, as a list.
BATCH_OBJECTS = {"__prefect_kind": "json", "value": {
    "__prefect_kind": "jinja", "template": "{{ event.payload.objects | tojson }}"}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="folder or prefix of recordings")
    parser.add_argument("--destination", required=True, help="folder or prefix for the outputs")
    parser.add_argument("--audio-format", default="wav", choices=["wav", "flac", "ogg", "cbin"])
    parser.add_argument("--nightly-cron", default="0 2 * * *")
    parser.add_argument("--ingest-cron", default="*/5 * * * *")
    parser.add_argument("--limit", type=int, default=4,
                        help="most flow runs at once; the others wait their turn (default: 4)")
    parser.add_argument("--poll", type=_seconds, default=2.0,
                        help="seconds between looks for runs to start (default: 2)")
    parser.add_argument("--workers", type=int, default=None,
                        help="workers of the local Dask cluster the runs share (default: one per core)")
    parser.add_argument("--dask-address", default=None,
                        help="an existing Dask cluster for the runs instead of a local one")
    parser.add_argument("--debounce", type=_seconds, default=None, metavar="SECONDS",
                        help="one ingest run, listing the source, SECONDS after the first event "
                             "of a burst, instead of a run per batch of objects (default: off)")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        address = args.dask_address
        if address is None:
            cluster = stack.enter_context(
                warm_cluster(DaskSettings(n_workers=args.workers), PREFECT_API_URL.value()))
            address = cluster.scheduler_address
        # Flow runs are processes of their own, started with this environment: their default
        # Dask settings take this cluster (see DaskSettings.with_configured_cluster).
        os.environ["DASK_SCHEDULER_ADDRESS"] = address
        print(f"runs compute on the Dask cluster at {address}", flush=True)
        # Flows given to the runner as objects (not as deployments to load from their
        # entrypoint) run as forks of a process that imported them (see flow_runs_forked).
        stack.enter_context(flow_runs_forked())
        runner = Runner(limit=args.limit, query_seconds=args.poll)
        names = []
        for flow, options in served(args.source, args.destination, args.audio_format,
                                    args.nightly_cron, args.ingest_cron, args.debounce):
            runner.add_flow(flow, **options)
            names.append(f"{flow.name}/{options['name']}")
        print(f"deployments are being served: {', '.join(names)}", flush=True)
        try:
            asyncio.run(runner.start())
        except (KeyboardInterrupt, TerminationSignal) as exc:
            print(f"received {type(exc).__name__}, shutting down", flush=True)


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


if __name__ == "__main__":
    main()
