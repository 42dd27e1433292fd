"""The ``spectroflow`` command: run the flow here with a progress bar, draw spectrogram files,
relay bucket notifications to Prefect.

    spectroflow run ../shared/data/gy6or6 out --audio-format cbin --annot-format notmat --labelset iabcdefghjk
    spectroflow run --config my_vak_config.toml
    spectroflow prep my_vak_config.toml --seed 1
    spectroflow plot out/032312/gy6or6_baseline_230312_0809.141.cbin.spect.npz -o song.png
    spectroflow relay --queue-url https://sqs.us-east-1.amazonaws.com/123456789012/lab-audio
    SPECTROFLOW_RELAY_TOKEN=... spectroflow relay --listen 0.0.0.0:8080
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from . import annotations as annotations_mod
from . import interrupt, storage, vakconfig
from . import plan as plan_mod
from . import progress as progress_mod
from .audio import READERS
from .discovery import NoRecordingsError
from .params import DaskSettings, SpectParams, labelset_to_set

if TYPE_CHECKING:
    from .report import RunSummary
    from .request import RunRequest

class _Command(typer.Typer):
    """The ``spectroflow`` command: what it ran is done when it returns, and the process ends."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        finally:
            # Python's exit still runs the atexit handlers (Prefect sends its last logs there),
            # but need not collect the garbage of memory the process is about to give back:
            # with Prefect and Dask loaded, that takes most of a second.
            gc.freeze()


# No markup in help texts: they hold vak's table names in square brackets.
app = _Command(help="vak-compatible spectrogram datasets from animal vocalization recordings.",
               no_args_is_help=True, add_completion=False, rich_markup_mode=None)
# Soft wrap: paths and reasons stay whole lines when the console is no terminal (a log file).
console = Console(stderr=True, soft_wrap=True)


class UsageError(Exception):
    """A mistake in the command's arguments or config: one line, exit code 2."""


def _labelset(value: str | None):
    """A labelset from the command line: JSON for a list (``'["en", "ab"]'``), else a string."""
    if value is not None and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--labelset: not a JSON list ({exc}): {value}") from exc
    return value


def _one_line(exc: Exception) -> str:
    """A validation error's messages on one line, each naming its field."""
    if isinstance(exc, ValidationError):
        messages = []
        for error in exc.errors():
            where, what = ".".join(map(str, error["loc"])), error["msg"].removeprefix("Value error, ")
            messages.append(f"{where}: {what}" if where else what)
        return "; ".join(messages)
    return " ".join(str(exc).split())


#: Options of the command for SpectParams fields, to name them in messages.
_OPTIONS = {"fft_size": "--fft-size", "step_size": "--step-size", "output_format": "--output-format",
            "output_dtype": "--output-dtype", "freq_cutoffs": "--freq-cutoffs",
            "thresh": "--thresh", "transform_type": "--transform-type"}
#: What an option says to set a parameter to None.
_NONE = "none"


def _cutoffs(value: str | None):
    """``--freq-cutoffs LOW,HIGH`` as vak's pair (``none``: no band-pass)."""
    if value is None or value.strip().lower() == _NONE:
        return value and _NONE
    parts = value.replace(" ", "").split(",")
    try:
        return [float(part) for part in parts]
    except ValueError as exc:
        raise UsageError(f"--freq-cutoffs: give LOW,HIGH in Hz, e.g. 500,10000; got {value}") from exc


def _transform(value: str | None) -> str | None:
    return _NONE if value is not None and value.lower() == _NONE else value


def _spect_params(base: SpectParams, **given) -> SpectParams:
    updates = {k: (None if v == _NONE else v) for k, v in given.items() if v is not None}
    try:
        return SpectParams(**{**base.model_dump(), **updates})
    except ValidationError as exc:
        names = [_OPTIONS.get(str(e["loc"][0]), str(e["loc"][0])) if e["loc"] else "spect_params"
                 for e in exc.errors()]
        messages = [e["msg"] for e in exc.errors()]
        raise UsageError("; ".join(f"{n}: {m}" for n, m in zip(names, messages, strict=True))) from exc


#: Options of the command for DaskSettings fields, to name them in messages.
_DASK_OPTIONS = {"address": "--dask-address", "n_workers": "--workers",
                 "cluster_class": "--cluster-class", "cluster_kwargs": "--cluster-kwargs",
                 "adapt_minimum": "--adapt-min", "adapt_maximum": "--adapt-max"}


def _dask_settings(address: str | None, workers: int | None, cluster_class: str | None,
                   kwargs_json: str | None, adapt_min: int | None,
                   adapt_max: int | None) -> DaskSettings:
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"--cluster-kwargs: not JSON ({exc}): {kwargs_json}") from exc
    given = {"address": address, "n_workers": workers, "cluster_class": cluster_class,
             "cluster_kwargs": kwargs, "adapt_minimum": adapt_min, "adapt_maximum": adapt_max}
    try:
        return DaskSettings.model_validate({k: v for k, v in given.items() if v})
    except ValidationError as exc:
        message = _one_line(exc)
        for field, option in _DASK_OPTIONS.items():
            message = message.replace(field, option)
        raise UsageError(message) from exc


def _check_storage(source: str, destination: str, write: bool = True) -> None:
    """The source exists and the destination takes a file (when ``write``), before anything
    starts."""
    try:
        storage.source_kind(source, retry=False)
    except storage.StorageError as exc:
        raise UsageError(_one_line(exc)) from exc
    except Exception as exc:
        raise UsageError(f"cannot read SOURCE {source}: {_one_line(exc)}") from exc
    if not write:
        return
    try:
        storage.check_writable(destination, leave_nothing=True)
    except storage.StorageError as exc:
        raise UsageError(_one_line(exc)) from exc


@contextmanager
def _console_level(level: str | None) -> Iterator[None]:
    """Within the block, Prefect's console shows ``level`` and above, here and in worker
    processes, which inherit the environment (records still reach the run's logs in the API).
    Prefect reads it when first imported, which the command does in the block."""
    name = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"
    before = os.environ.get(name)
    if level is not None:
        os.environ[name] = level
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@app.command()
def run(
    source: Annotated[str | None, typer.Argument(help="Folder, prefix (s3://...) or file of recordings; "
                                                    "default: data_dir of --config.")] = None,
    destination: Annotated[str | None, typer.Argument(help="Where the .spect.npz files go; "
                                                         "default: output_dir of --config.")] = None,
    config: Annotated[Path | None, typer.Option(help="vak TOML config: [vak.prep], "
                                                   "[vak.prep.spect_params] and [spectroflow] "
                                                   "give the defaults.")] = None,
    audio_format: Annotated[str | None, typer.Option(help="wav, flac, ogg or cbin [default: wav].")] = None,
    annot_format: Annotated[str | None, typer.Option(help="crowsetta format, e.g. notmat.")] = None,
    annotations: Annotated[str | None, typer.Option(help="Annotation file or folder (default: under SOURCE).")] = None,
    labelset: Annotated[str | None, typer.Option(help="vak labelset: abc, 'range: 1-3, 5', or JSON "
                                                    "'[\"en\", \"ab\"]'.")] = None,
    fft_size: Annotated[int | None, typer.Option(help="Window length in samples [default: 512].")] = None,
    step_size: Annotated[int | None, typer.Option(help="Hop in samples [default: 64].")] = None,
    freq_cutoffs: Annotated[str | None, typer.Option(help="Band-pass LOW,HIGH in Hz, e.g. 500,10000 "
                                                     "[default: none].")] = None,
    thresh: Annotated[float | None, typer.Option(help="Threshold, as vak applies it with "
                                                 "--transform-type [default: none].")] = None,
    transform_type: Annotated[str | None, typer.Option(help="log_spect, log_spect_plus_one, or none "
                                                       "[default: none].")] = None,
    output_format: Annotated[str | None, typer.Option(help="npz (as vak writes), npz-compressed, or "
                                                      "zarr (a group per recording, chunked along "
                                                      "time) [default: npz].")] = None,
    output_dtype: Annotated[str | None, typer.Option(help="float64 (as vak writes) or float32, "
                                                     "half the bytes [default: float64].")] = None,
    dask_address: Annotated[str | None, typer.Option(help="Address of an existing Dask scheduler.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes, or jobs of --cluster-class "
                                                "[default: one local process per core].")] = None,
    cluster_class: Annotated[str | None, typer.Option(help="Dask cluster class to start, e.g. "
                                                      "dask_jobqueue.SLURMCluster.")] = None,
    cluster_kwargs: Annotated[str | None, typer.Option(help="Its keyword arguments as JSON, e.g. "
                                                       "'{\"queue\": \"normal\", \"cores\": 1, "
                                                       "\"memory\": \"4GB\"}'.")] = None,
    adapt_min: Annotated[int | None, typer.Option(help="Adaptive scaling: fewest workers.")] = None,
    adapt_max: Annotated[int | None, typer.Option(help="Adaptive scaling: most workers.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Files per task [default: automatic].")] = None,
    batch_tag: Annotated[list[str] | None, typer.Option(help="Tag the batch tasks (repeatable): a "
                                                         "tag concurrency limit caps them across "
                                                         "runs.")] = None,
    recompute: Annotated[bool, typer.Option(help="Recompute outputs that are up to date.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Plan and say what a run would compute, up to date, "
                                          "skip or fail; compute and write nothing.")] = False,
    flow: Annotated[bool, typer.Option("--flow", help="Run as a Prefect flow on Dask (the default "
                                       "when PREFECT_API_URL is set or a Dask option is given), "
                                       "with a temporary Prefect API if none is set.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the run's summary as JSON on "
                                              "standard output.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every log line.")] = False,
):
    """Make one .spect.npz per recording, with a progress bar: on this machine's cores, or as a
    Prefect flow on Dask (--flow, or PREFECT_API_URL set)."""
    try:
        cfg = vakconfig.load(config) if config else vakconfig.PrepConfig()
        source = source or cfg.data_dir
        destination = destination or cfg.output_dir
        if source is None or destination is None:
            raise UsageError("give SOURCE and DESTINATION, or a --config with data_dir and output_dir")
        params = _spect_params(cfg.spect_params, fft_size=fft_size, step_size=step_size,
                               freq_cutoffs=_cutoffs(freq_cutoffs), thresh=thresh,
                               transform_type=_transform(transform_type),
                               output_format=output_format, output_dtype=output_dtype)
        audio_format = audio_format or cfg.audio_format or "wav"
        if audio_format not in READERS:
            raise UsageError(f"--audio-format: {audio_format!r} is not one of {sorted(READERS)}")
        labels = _labelset(labelset) if labelset is not None else cfg.labelset
        if labels is not None:
            labelset_to_set(labels)
        annot_format = annot_format or cfg.annot_format
        if annot_format is not None:
            try:
                annotations_mod.suffixes(annot_format)
            except ValueError as exc:
                raise UsageError(f"--annot-format: {exc}") from exc
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"--batch-size: must be at least 1, got {batch_size}")
        dask = _dask_settings(dask_address, workers, cluster_class, cluster_kwargs, adapt_min,
                              adapt_max)
        _check_storage(source, destination, write=not dry_run)
    except (UsageError, vakconfig.ConfigError, ValueError) as exc:
        if verbose:
            console.print_exception()
        console.print(f"error: {_one_line(exc)}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc

    use_flow = flow or bool(dask_address or cluster_class or batch_tag or adapt_min or adapt_max
                            or _prefect_api_url())
    arguments = dict(source=source, destination=destination, audio_format=audio_format,
                     spect_params=params, annot_format=annot_format,
                     annotations=annotations or cfg.annot_file, labelset=labels,
                     skip_done=not recompute)
    # The bar's row appears once the run knows its work, after planning.
    with _console_level(None if verbose else "WARNING"), progress_mod.bar(console), \
            interrupt.exit_on_signals():
        try:
            if use_flow:
                outcome = _run_flow(arguments, dask, batch_size, batch_tag or [], dry_run)
            else:
                outcome = _run_here(arguments, dask.n_workers, batch_size, dry_run, verbose)
        except NoRecordingsError as exc:
            console.print(f"error: {exc}", markup=False, highlight=False)
            raise typer.Exit(2) from exc
    if json_output:
        print(json.dumps(outcome))
    if outcome["dry_run"]:
        _print_dry_run(outcome)
        return
    counts = ", ".join(f"{n} {status}" for status, n in sorted(outcome["counts"].items()))
    report = outcome["report"] or (f"not written ({outcome['report_error']})"
                                   if outcome["report_error"] else "none, nothing new")
    console.print(f"{counts or 'no files'}\nreport: {report}\nmanifest: {outcome['manifest']}",
                  highlight=False)
    for src, reason in outcome["failed"][:20]:
        console.print(f"[red]failed[/] {src}: {reason}", highlight=False)
    if outcome["stopped"]:
        console.print(f"[yellow]stopped[/] ({outcome['stopped']}): {outcome['not_done']} files "
                      "not done; run the same command again to compute them", highlight=False)
        # A shell's convention: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM).
        raise typer.Exit(128 + (outcome["stop_signal"] or signal.SIGINT))
    if outcome["failed"]:
        raise typer.Exit(1)


def _prefect_api_url() -> str | None:
    """``PREFECT_API_URL`` as Prefect finds it: the environment, else the active profile of
    ``$PREFECT_HOME/profiles.toml``; read here without importing Prefect, which takes seconds."""
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    name = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    return profiles.get("profiles", {}).get(name, {}).get("PREFECT_API_URL")


def _run_flow(arguments: dict, dask: DaskSettings, batch_size: int | None,
              batch_tags: list[str], dry_run: bool) -> dict:
    """The run as a Prefect flow on Dask (a temporary API unless one is configured): its
    outcome (:class:`~spectroflow.orchestration.run.RunOutcome`) as a dict."""
    with _uncollected():  # Prefect, Dask and the flows
        from .flows.spectrograms import spectrogram_flow
        from .orchestration.ephemeral import temporary_api
        from .orchestration.run import RunOutcome

    with temporary_api(), _heartbeats_as_set():
        state = spectrogram_flow(**arguments, dask=dask, batch_size=batch_size,
                                 batch_tags=batch_tags, dry_run=dry_run, return_state=True)
    try:
        payload = state.result(raise_on_failure=False)
    except NoRecordingsError:
        raise
    except Exception as exc:
        console.print(f"[red]run failed:[/] {exc}")
        raise typer.Exit(2) from exc
    if isinstance(payload, NoRecordingsError):
        raise payload
    if not isinstance(payload, dict):
        console.print(f"[red]run failed:[/] {state.message or payload}")
        raise typer.Exit(2)
    return RunOutcome.model_validate(payload).model_dump()


@contextmanager
def _uncollected() -> Iterator[None]:
    """No garbage collection in the block, and what it made kept out of later ones.

    Imports make many objects and little garbage: the collector's passes over them are a
    tenth of the time Prefect and Dask take to import (docs/performance.md).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@contextmanager
def _heartbeats_as_set() -> Iterator[None]:
    """No flow run heartbeats unless a setting asks for them.

    Prefect sends them by default (every 180 s) so that an automation can mark a deployment's
    run that stopped sending them Crashed; the command's run is no deployment's, and it ends
    its run itself on a signal. Their thread, joined at the run's end, sleeps a second at a
    time: a small job waited up to a second for it. ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, in
    the environment or the profile, keeps them.
    """
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        yield
        return
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _run_here(arguments: dict, workers: int | None, batch_size: int | None, dry_run: bool,
              verbose: bool) -> dict:
    """The run with the library on this machine's cores, without Prefect: what
    :func:`_run_flow` returns, for the same outputs, report and manifest."""
    from . import pipeline
    from .report import RECORDINGS_IN_OUTCOME
    from .request import RunRequest, source_at

    annotations = arguments["annotations"]
    if arguments["annot_format"] is not None and annotations is None:
        annotations = arguments["source"]  # searched under the source, as the flow does
    request = RunRequest(source=source_at(arguments["source"]),
                         destination=arguments["destination"],
                         audio_format=arguments["audio_format"],
                         spect_params=arguments["spect_params"],
                         annot_format=arguments["annot_format"], annotations=annotations,
                         labelset=arguments["labelset"],
                         skip_done=arguments["skip_done"]).anchored()
    with _library_logs(verbose):
        if dry_run:
            preview = plan_mod.preview(plan_mod.prepare(request, dry_run=True))
            return {**_OUTCOME, **dataclasses.asdict(preview), "dry_run": True}
        with interrupt.stop_on_signals(interrupt.Stop()) as stop:
            summary = pipeline.run_request(request, workers, batch_size, stop=stop)
    outcome = {name: getattr(summary, name) for name in _OUTCOME if hasattr(summary, name)}
    return {**outcome, "failed": [list(f) for f in summary.failed[:RECORDINGS_IN_OUTCOME]],
            "outputs": len(summary.outputs or []), "dry_run": False, "to_compute": [],
            "skipped": []}


#: The outcome of a run as the command prints it, with its defaults: the fields of
#: :class:`~spectroflow.orchestration.run.RunOutcome`.
_OUTCOME: dict = {"counts": {}, "report": None, "report_error": None, "manifest": None,
                  "failed": [], "outputs": 0, "stopped": None, "stop_signal": None,
                  "not_done": 0, "dry_run": False, "to_compute": [], "skipped": []}


@contextmanager
def _library_logs(verbose: bool) -> Iterator[None]:
    """Within the block, the library's warnings (every record with ``verbose``) on the console,
    as a flow run shows them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s", "%H:%M:%S"))
    lib = logging.getLogger("spectroflow")
    level = lib.level
    lib.setLevel(logging.INFO if verbose else logging.WARNING)
    lib.addHandler(handler)
    try:
        yield
    finally:
        lib.removeHandler(handler)
        lib.setLevel(level)


def _print_dry_run(outcome: dict) -> None:
    counts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in outcome["counts"].items())
    console.print(f"dry run, nothing computed or written: {counts}", highlight=False)
    for src in outcome["to_compute"][:20]:
        console.print(f"would compute {src}", markup=False, highlight=False)
    if outcome["counts"].get("to_compute", 0) > 20:
        console.print(f"... and {outcome['counts']['to_compute'] - 20} more", highlight=False)
    for src, reason in outcome["skipped"][:20]:
        console.print(f"[yellow]would skip[/] {src}: {reason}", highlight=False)
    for src, reason in outcome["failed"][:20]:
        console.print(f"[red]would fail[/] {src}: {reason}", highlight=False)


@app.command()
def plot(
    spect_file: Annotated[str, typer.Argument(help="A .spect.npz file or .spect.zarr group "
                                                   "(path or URL).")],
    output: Annotated[str, typer.Option("-o", "--output", help="PNG to write.")] = "spectrogram.png",
    annot: Annotated[str | None, typer.Option(help="Annotation file whose segments to draw.")] = None,
    annot_format: Annotated[str | None, typer.Option(help="crowsetta format of --annot.")] = None,
    config: Annotated[Path | None, typer.Option(help="vak config giving the array keys and annot_format.")] = None,
):
    """Draw a spectrogram file with time and frequency axes, and labeled segments if annotated."""
    from .plot import plot_file

    try:
        cfg = vakconfig.load(config) if config else vakconfig.PrepConfig()
    except vakconfig.ConfigError as exc:
        console.print(f"error: {_one_line(exc)}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    fmt = annot_format or cfg.annot_format
    if annot and not fmt:
        raise typer.BadParameter("--annot needs --annot-format (or a --config that gives annot_format)")
    plot_file(spect_file, output, annot, fmt, cfg.spect_params)
    console.print(f"wrote {output}")


@app.command()
def prep(
    config: Annotated[Path, typer.Argument(help="vak TOML config with [vak.prep] (or vak 0.x's "
                                                "[PREP]) and the table of the command the "
                                                "dataset is for, e.g. [vak.train].")],
    seed: Annotated[int | None, typer.Option(help="Seed of the train/val/test split [default: "
                                             "drawn]; recorded in the dataset.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes [default: one per "
                                                "core].")] = None,
    flow: Annotated[bool, typer.Option("--flow", help="Make the spectrograms with the Prefect "
                                       "flow on Dask (the default when PREFECT_API_URL is set), "
                                       "with a temporary Prefect API if none is set.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every log line.")] = False,
):
    """Write the frame-classification dataset vak prep writes from audio, then name it in the
    config ([vak.train.dataset] path, ...) as vak prep does: ready for vak train CONFIG. The
    spectrograms are made as spectroflow run makes them: on this machine's cores, or as a
    Prefect flow on Dask (--flow, or PREFECT_API_URL set)."""
    from .vakprep import PrepError, PrepRequest
    from .vakprep import prep as prep_dataset

    try:
        named = vakconfig.named_dataset(config)
        if named:
            raise UsageError(f"{config} already names a dataset ({named}); vak would not "
                             "overwrite it either: remove that key, or use another config")
        request = PrepRequest.from_config(config, seed=seed)
    except (UsageError, vakconfig.ConfigError, ValueError) as exc:
        console.print(f"error: {_one_line(exc)}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    with _console_level(None if verbose else "WARNING"), _library_logs(verbose), \
            progress_mod.bar(console):
        try:
            runner = _flow_spectrograms(workers) if flow or _prefect_api_url() else None
            result = prep_dataset(request, num_workers=workers, run_spectrograms=runner)
        except (PrepError, NoRecordingsError) as exc:
            console.print(f"error: {_one_line(exc)}", markup=False, highlight=False)
            raise typer.Exit(2) from exc
    vakconfig.record_dataset(config, result.dataset_path, result.csv_path)
    dataset = storage.Location(url=result.dataset_path, options=request.storage_options)
    dataset.join(config.name).write_bytes(config.read_bytes())
    splits = ", ".join(f"{n} {name}" for name, n in result.splits.items())
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.summary.counts.items()))
    console.print(f"dataset: {result.dataset_path}\nsplits: {splits} (seed {result.seed})\n"
                  f"spectrograms: {counts}; report: {result.summary.report}\n"
                  f"{config}: names the dataset for vak {request.purpose}", highlight=False)
    for src, reason in result.summary.failed[:20]:
        console.print(f"[red]failed[/] {src}: {reason}", highlight=False)
    if result.summary.failed:
        raise typer.Exit(1)


def _flow_spectrograms(workers: int | None) -> Callable[[RunRequest], RunSummary]:
    """prep's spectrograms made by the spectrogram flow on a local Dask cluster of ``workers``
    processes (see :func:`_run_flow`), summarized as the library summarizes its runs."""
    from .report import RunSummary
    from .request import Folder

    def run(request: RunRequest) -> RunSummary:
        assert isinstance(request.source, Folder)  # prep runs over data_dir
        labelset = None if request.labelset is None else sorted(request.labelset)
        outcome = _run_flow(dict(
            source=request.source.folder, destination=request.destination,
            audio_format=request.audio_format, spect_params=request.spect_params,
            annot_format=request.annot_format, annotations=request.annotations,
            labelset=labelset, storage_options=request.storage_options,
            skip_done=request.skip_done), DaskSettings(n_workers=workers), None, [], False)
        return RunSummary(
            counts=outcome["counts"], failed=[tuple(f) for f in outcome["failed"]],
            report=outcome["report"], outputs=None, report_error=outcome["report_error"],
            manifest=outcome["manifest"], stopped=outcome["stopped"],
            stop_signal=outcome["stop_signal"], not_done=outcome["not_done"])

    return run


@app.command()
def relay(
    queue_url: Annotated[str | None, typer.Option(help="The SQS queue that receives the bucket's "
                                                       "event notifications.")] = None,
    listen: Annotated[str | None, typer.Option(
        metavar="HOST:PORT", help="Receive the notifications POSTed over HTTP here instead (MinIO's "
        "webhook, Ceph's HTTP push endpoint); senders present the token in "
        "SPECTROFLOW_RELAY_TOKEN, which must be set unless HOST is a loopback address.")] = None,
    wait: Annotated[int, typer.Option(min=1, max=20, help="Seconds each receive waits for "
                                                          "messages (long polling).")] = 20,
    max_body: Annotated[int, typer.Option(min=1, help="With --listen: the largest body read, in "
                                                      "bytes; longer ones are answered 413.")] = 1 << 20,
    window: Annotated[float, typer.Option(min=0, help="Seconds from a new object to the events "
                                                      "of its batch: the objects notified "
                                                      "meanwhile join it (one ingest run a "
                                                      "batch).")] = 5.0,
):
    """Relay S3 event notifications from an SQS queue, or POSTed over HTTP, to PREFECT_API_URL
    as spectroflow.audio.created events, one per object, and spectroflow.audio.batch events,
    one per bucket and --window, until stopped (SIGTERM or Ctrl-C)."""
    from .orchestration import relay as relay_mod

    try:
        if (queue_url is None) == (listen is None):
            raise ValueError("give either --queue-url or --listen")
        if queue_url is not None:
            relay_mod.run(queue_url, wait, window)
        else:
            from .orchestration import webhook

            webhook.run(str(listen), max_body, window)
    except ValueError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc


def main() -> None:  # pragma: no cover - console script entry
    app()
