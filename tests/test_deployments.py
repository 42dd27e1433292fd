"""Deployments from the project's own definitions, on a real ``prefect server`` on 127.0.0.1.

The server runs with its services (scheduler, event triggers), which the test harness does not
start: schedules and triggers need them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.deployments import run_deployment
from prefect.flow_runs import wait_for_flow_run

from spectroflow.orchestration.relay import AUDIO_BATCH, CreatedObject, events

from conftest import WAVS, OutputLines, prefect_server, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
NEVER = "0 3 1 1 *"  # once a year: schedules exist, but fire in no test


@pytest.fixture
def server(tmp_path_factory):
    """``prefect server start`` with a fresh database; yields the API URL and the child env.

    One per test: deployments of ``prefect.yaml`` and of ``serve.py`` share names on purpose
    (they are the same deployments, run two ways) and would replace each other.
    """
    with prefect_server(tmp_path_factory.mktemp("server"),
                        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
                        PREFECT_SERVER_UI_ENABLED="false") as (base, env):
        yield f"{base}/api", env


def post_events(api_url: str, events: list) -> None:
    body = json.dumps([e.model_dump(mode="json") for e in events]).encode()
    request = urllib.request.Request(f"{api_url}/events", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status in (200, 202, 204)


def wait_for_run(flow_run_id, timeout=240):
    """The flow run, once in a final state: Prefect waits on the run's state events."""
    return asyncio.run(wait_for_flow_run(flow_run_id, timeout=timeout))


def test_prefect_yaml_deploys_and_a_worker_runs_custom_parameters(server, tmp_path):
    _url, env = server
    audio = tmp_path / "audio"
    audio.mkdir()
    for wav in WAVS[:2]:
        (audio / wav.name).write_bytes(wav.read_bytes())
    env = {**env, "SPECTROFLOW_SOURCE": str(audio), "SPECTROFLOW_DESTINATION": str(tmp_path / "spect")}
    prefect = [sys.executable, "-m", "prefect"]
    subprocess.run([*prefect, "work-pool", "create", "spectroflow", "--type", "process"],
                   env=env, check=True, capture_output=True)
    done = subprocess.run([*prefect, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

    with get_client(sync_client=True) as client:
        by_name = {d.name: d for d in client.read_deployments()}
        assert {"nightly", "on-demand", "ingest"} <= set(by_name)
        nightly = by_name["nightly"]
        assert nightly.tags == ["spectroflow", "scheduled"]
        assert nightly.work_pool_name == "spectroflow"
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
        assert nightly.parameters["source"] == str(audio)
        assert by_name["ingest"].parameter_openapi_schema["properties"]["objects"]
        # The parameter form: typed fields with descriptions and defaults; where to read and
        # write are the deployment's to say, never a path of the machine that deployed it.
        schema = by_name["on-demand"].parameter_openapi_schema
        props = schema["properties"]
        assert "description" in props["labelset"] and props["audio_format"]["default"] == "wav"
        assert {"source", "destination"} <= set(schema["required"])
        assert "default" not in props["source"] and "default" not in props["destination"]

    custom = {"source": str(audio), "destination": str(tmp_path / "custom"),
              "spect_params": {"fft_size": 256, "step_size": 32}, "dask": {"n_workers": 1}}
    run = run_deployment("spectrogram-flow/on-demand", parameters=custom, timeout=0)
    worker = subprocess.run(
        [*prefect, "worker", "start", "--pool", "spectroflow", "--run-once", "--limit", "1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    finished = wait_for_run(run.id, timeout=60)
    assert finished.state.is_completed(), worker.stdout[-3000:] + worker.stderr[-3000:]
    import numpy as np

    outs = sorted((tmp_path / "custom").glob("*.spect.npz"))
    assert [p.name for p in outs] == [f"{w.name}.spect.npz" for w in WAVS[:2]]
    with np.load(outs[0], allow_pickle=False) as npz:
        assert npz["s"].shape[0] == 129, "custom fft_size reached the run"


#: What the first UI's run form, which reads descriptions as markdown, takes for an HTML tag
#: and drops (``<name>`` in ``aws-credentials/<name>``).
HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")


def descriptions(schema: dict) -> dict[str, str]:
    """Every description in a parameter schema, its models' fields included, by dotted name."""
    found = {name: prop.get("description", "") for name, prop in schema["properties"].items()}
    for model, definition in schema.get("definitions", {}).items():
        found.update({f"{model}.{name}": prop.get("description", "")
                      for name, prop in definition.get("properties", {}).items()})
    return found


def test_the_run_forms_require_source_and_destination_and_read_as_written():
    """The flows' own schemas, which every deployment's run form shows: ``source`` and
    ``destination`` required, with no default (the sample data's path on the machine that
    deployed was one); ``serve.py`` gives its deployments the served ones as parameters."""
    import importlib.util

    from spectroflow.flows.ingest import ingest_flow
    from spectroflow.flows.spectrograms import spectrogram_flow

    for flow in (spectrogram_flow, ingest_flow):
        schema = flow.parameters.model_dump()
        assert {"source", "destination"} <= set(schema["required"]), flow.name
        props = schema["properties"]
        assert "default" not in props["source"] and "default" not in props["destination"]
        texts = descriptions(schema)
        assert not {name: t for name, t in texts.items() if HTML_TAG.search(t)}, flow.name
        assert "as BLOCK-TYPE/NAME" in texts["storage_block"]
        assert "aws-credentials/NAME" in texts["storage_block"]

    spec = importlib.util.spec_from_file_location("serve", ROOT / "deployments" / "serve.py")
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    served = serve.deployments("s3://lab-bucket/audio", "s3://lab-bucket/spect")
    assert all(d.parameters["source"] == "s3://lab-bucket/audio" and
               d.parameters["destination"] == "s3://lab-bucket/spect" for d in served)


def test_serve_debounce_makes_one_listing_run_per_burst_instead_of_one_per_batch():
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve", ROOT / "deployments" / "serve.py")
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)

    def ingest_trigger(*debounce):
        (ingest,) = [d for d in serve.deployments("s3://lab/audio", "s3://lab/spect", "wav",
                                                  NEVER, NEVER, *debounce) if d.name == "ingest"]
        (trigger,) = ingest.triggers
        return trigger

    batch = ingest_trigger()
    assert batch.expect == {AUDIO_BATCH} and "objects" in batch.parameters
    debounced = ingest_trigger(20.0)
    assert debounced.expect == {"spectroflow.audio.created"}
    assert debounced.match.model_dump() == {"prefect.resource.id": "s3://lab/audio/*"}
    assert debounced.within.total_seconds() == debounced.schedule_after.total_seconds() == 20
    assert not debounced.parameters, "the run lists the source"
    # The flag, as the command line takes it.
    done = subprocess.run([sys.executable, "deployments/serve.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert "--debounce SECONDS" in done.stdout


def test_served_deployments_run_on_request_and_on_events(server, s3, tmp_path):
    url, env = server
    fs, bucket = s3
    source, destination = f"s3://{bucket}/audio", f"s3://{bucket}/spect"
    fs.pipe(f"{bucket}/audio/a/{WAVS[0].name}", WAVS[0].read_bytes())
    proc = subprocess.Popen(
        [sys.executable, "deployments/serve.py", "--source", source, "--destination", destination,
         "--nightly-cron", NEVER, "--ingest-cron", NEVER],
        env={**env, "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]}, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output = OutputLines(proc.stdout)
    try:
        # Prefect's serve says so once it has created every deployment.
        served = output.wait_for(lambda line: "deployments are being served" in line, 120)
        assert served, output.text()
        with get_client(sync_client=True) as client:
            deployments = {d.name: d for d in client.read_deployments()}
            assert deployments.keys() >= {"nightly", "on-demand", "ingest"}, output.text()
            ingest = deployments["ingest"]
            # The scheduler service fills in the schedule.
            scheduled = wait_for(lambda: client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[ingest.id]))), 60, "scheduled runs")
            assert all(r.state.is_scheduled() for r in scheduled)

        run = run_deployment("spectrogram-flow/on-demand", timeout=0,
                             parameters={"destination": f"s3://{bucket}/manual", "dask": {"n_workers": 1}})
        assert wait_for_run(run.id).state.is_completed()
        fs.invalidate_cache()
        assert fs.exists(f"{bucket}/manual/a/{WAVS[0].name}.spect.npz")

        # A batch of bucket notifications, relayed as the relay makes it, starts an ingest run
        # over the objects it names: those under the source; the other new object waits for
        # the periodic run.
        for wav in WAVS[1:4]:
            fs.pipe(f"{bucket}/audio/b/{wav.name}", wav.read_bytes())
        named = [f"{source}/b/{wav.name}" for wav in WAVS[1:3]] + [f"s3://{bucket}/other/x.wav"]
        batch = events([CreatedObject(url, "etag", f"0A{i}", 1, "ObjectCreated:Put at t")
                        for i, url in enumerate(named)])
        assert batch[-1].event == AUDIO_BATCH

        def triggered_run():
            # Posted to the server's events API, as the relay would; again every few seconds,
            # since the trigger service loads new automations periodically (repeated events
            # are dropped by id once one was taken).
            if int(time.monotonic()) % 5 == 0:
                post_events(url, batch)
            with get_client(sync_client=True) as client:
                return [r for r in client.read_flow_runs(limit=50)
                        if r.deployment_id == ingest.id and not r.auto_scheduled]

        triggered = wait_for(triggered_run, 180, "a run started by the batch")[0]
        assert triggered.parameters["objects"] == named
        assert wait_for_run(triggered.id).state.is_completed()
        fs.invalidate_cache()
        for wav in WAVS[1:3]:
            assert fs.exists(f"{bucket}/spect/b/{wav.name}.spect.npz")
        assert not fs.exists(f"{bucket}/spect/b/{WAVS[3].name}.spect.npz"), "not named"
        with get_client(sync_client=True) as client:
            runs = [r for r in client.read_flow_runs(limit=50) if r.deployment_id == ingest.id
                    and not r.auto_scheduled]
            assert len(runs) == 1, [r.name for r in runs]
            logs = "\n".join(log.message for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[triggered.id]))))
        assert "ignoring 1 of the 3 objects named" in logs, logs
        # Served runs compute on serve.py's warm cluster.
        assert "computing on the Dask cluster at tcp://127.0.0.1:" in logs, logs
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def finished_run(prefect_api, tmp_path_factory):
    """A finished run of the flow (two batch tasks of one file) on Prefect's test harness."""
    from spectroflow.flows.spectrograms import spectrogram_flow
    from spectroflow.params import DaskSettings

    out = tmp_path_factory.mktemp("finished-run")
    state = spectrogram_flow(source=[str(w) for w in WAVS[:2]], destination=str(out), batch_size=1,
                             dask=DaskSettings(n_workers=1), return_state=True)
    assert state.is_completed(), state.message
    return state


def test_task_runs_are_untagged_by_default(finished_run):
    """A tagged task run asks the API for a concurrency slot before it starts: none by default."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[finished_run.state_details.flow_run_id])))
    tags = {run.name: run.tags for run in runs}
    assert sum(name.startswith("spectrograms-") for name in tags) == 2, tags
    assert all(not t for t in tags.values()), tags


def test_the_summary_is_persisted_for_callers_in_another_process(finished_run):
    """What ``run_deployment`` callers do: read the finished run from the API, then its result."""
    from prefect.settings import PREFECT_API_URL

    code = ("import json, sys; from prefect.client.orchestration import get_client\n"
            "with get_client(sync_client=True) as client:\n"
            "    print(json.dumps(client.read_flow_run(sys.argv[1]).state.result()))")
    done = subprocess.run([sys.executable, "-c", code, str(finished_run.state_details.flow_run_id)],
                          env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    assert payload["counts"] == {"written": 2} and payload["outputs"] == 2
    assert payload == json.loads(json.dumps(finished_run.result()))
    assert payload["report"].endswith(".csv") and Path(payload["report"]).exists()


def test_a_tag_concurrency_limit_runs_batches_one_at_a_time(prefect_api, tmp_path):
    """``prefect concurrency-limit create spectroflow-batch 1``, as an admin would, holds two
    workers to one batch at a time in runs whose ``batch_tags`` name it."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL

    from spectroflow.flows.spectrograms import spectrogram_flow
    from spectroflow.params import DaskSettings

    def cli(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "prefect", "concurrency-limit", *args], check=True,
                       env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
                       capture_output=True, timeout=120)

    cli("create", "spectroflow-batch", "1")
    try:
        state = spectrogram_flow(source=[str(w) for w in WAVS[:8]], destination=str(tmp_path),
                                 batch_size=2, batch_tags=["spectroflow-batch"],
                                 dask=DaskSettings(n_workers=2), return_state=True)
    finally:
        cli("delete", "spectroflow-batch")
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    batches = [r for r in runs if r.name.startswith("spectrograms-")]
    assert all(r.tags == ["spectroflow-batch"] for r in batches), [r.tags for r in batches]
    assert all(not r.tags for r in runs if r not in batches), [r.tags for r in runs]
    spans = sorted((r.start_time, r.end_time) for r in batches)
    assert len(spans) == 4
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans)), spans


def _yaml_steps(config) -> list[tuple[str, dict]]:
    """Every build, push and pull step of a prefect.yaml model: (function name, arguments)."""
    return [(name, args) for section in (config.build, config.push, config.pull)
            for step in section or [] for name, args in step.items()]


def test_docker_yaml_steps_and_deployments_are_what_prefect_deploy_takes():
    """The Docker deployments, loaded with ``prefect deploy``'s own model of prefect.yaml, their
    steps' arguments bound to the step functions, and the image's working directory."""
    import inspect
    import typing

    import yaml
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.utilities.importtools import import_object

    def load(name: str) -> PrefectYamlModel:
        return PrefectYamlModel.model_validate(yaml.safe_load((ROOT / "deployments" / name).read_text()))

    docker, process = load("docker.yaml"), load("prefect.yaml")
    steps = _yaml_steps(docker)
    assert [name.rsplit(".", 1)[1] for name, _ in steps] == [
        "build_docker_image", "push_docker_image", "set_working_directory"]
    pytest.importorskip("prefect_docker", reason="the docker extra: pip install -e '.[test,docker]'")
    for name, args in steps:
        call = {k: v for k, v in args.items() if k not in ("id", "requires")}
        inspect.signature(import_object(name)).bind(**call)
    # What the push step and the work pool name must be outputs of the build step.
    outputs = typing.get_type_hints(import_object(steps[0][0]))["return"].__annotations__
    assert {"image", "image_name", "tag"} <= set(outputs)
    workdir = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines()
               if line.startswith("WORKDIR")]
    assert workdir == [steps[2][1]["directory"]]

    def essentials(config):
        return [(d.name, d.entrypoint, d.parameters, d.schedules, d.triggers, d.tags)
                for d in config.deployments]

    assert essentials(docker) == essentials(process), "the same deployments as prefect.yaml"
    pools = {d.name: d.work_pool for d in docker.deployments}
    assert all(p.name == "spectroflow-docker" and p.job_variables == {"image": "{{ build-image.image }}"}
               for p in pools.values()), pools


def test_the_dockerfile_installs_the_project_and_the_image_loads_the_flows(tmp_path):
    """No Docker daemon here: the Dockerfile's COPY and RUN lines, replayed in a fresh virtual
    environment that sees this one's packages as installed (pip, setuptools and the project's
    dependencies: what pip would download, offline here), so that pip installs the project alone.

    Then, in its WORKDIR, Prefect loads both entrypoints with the installed library.
    """
    import sysconfig

    lines = [line.split(maxsplit=1) for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == ["FROM", "python:3.11-slim"]
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    image = tmp_path / "image"
    workdir = env = None
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=300)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
           # pip reads PIP_NO_BUILD_ISOLATION inverted: "0" builds with the setuptools seen.
           "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PYTHONPATH": ""}
    for instruction, rest in lines[1:]:
        if instruction == "ENV":
            env.update(pair.split("=", 1) for pair in rest.split())
        elif instruction == "WORKDIR":
            workdir = image / rest.lstrip("/")
            workdir.mkdir(parents=True)
        elif instruction == "COPY":
            *sources, target = rest.split()
            for source in sources:
                assert source.rstrip("/") in allowed, f"{source} is left out by .dockerignore"
                dest = workdir / target / Path(source).name if target.endswith("/") and \
                    not source.endswith("/") else workdir / target
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, dest, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, dest)
        elif instruction == "RUN":
            done = subprocess.run(["bash", "-c", rest], cwd=workdir, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        else:
            pytest.fail(f"this test does not replay {instruction}")
    code = ("import spectroflow\nfrom prefect.flows import load_flow_from_entrypoint\n"
            "print(spectroflow.__file__)\n"
            "for entrypoint in ('flows/spectrograms.py:spectrogram_flow', "
            "'flows/ingest.py:ingest_flow'):\n"
            "    print(load_flow_from_entrypoint(entrypoint).name)\n")
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    library, *flows = done.stdout.split()
    assert Path(library).is_relative_to(site), "the library the image installed"
    assert flows == ["spectrogram-flow", "ingest-flow"]


def test_runs_from_git_with_git_yaml_and_from_source(server, tmp_path):
    """Workers that have no checkout: ``git.yaml``'s git_clone pull step, and the README's
    ``flow.from_source(...).deploy(...)``, each run a flow from a clone of this repository's
    branch (a bare copy reached by a file:// URL, standing in for the lab's git server)."""
    from prefect import flow
    from prefect.runner.storage import GitRepository

    _url, env = server
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / WAVS[0].name).write_bytes(WAVS[0].read_bytes())
    repository = tmp_path / "spectroflow.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(ROOT), str(repository)], check=True,
                   timeout=120)
    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    env = {**env, "SPECTROFLOW_REPOSITORY": repository.as_uri(), "SPECTROFLOW_BRANCH": branch,
           "SPECTROFLOW_SOURCE": str(audio), "SPECTROFLOW_DESTINATION": str(tmp_path / "unused")}
    prefect = [sys.executable, "-m", "prefect"]
    subprocess.run([*prefect, "work-pool", "create", "spectroflow-git", "--type", "process"],
                   env=env, check=True, capture_output=True)
    done = subprocess.run([*prefect, "--no-prompt", "deploy", "--all", "--prefect-file",
                           "deployments/git.yaml"], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    flow.from_source(
        source=GitRepository(url=repository.as_uri(), branch=branch),
        entrypoint="flows/spectrograms.py:spectrogram_flow",
    ).deploy(name="from-source", work_pool_name="spectroflow-git", print_next_steps=False)

    one_worker = {"dask": {"n_workers": 1}}
    runs = {name: run_deployment(f"spectrogram-flow/{name}", timeout=0, parameters={
        "source": str(audio), "destination": str(tmp_path / name), **one_worker})
        for name in ("on-demand", "from-source")}
    workdir = tmp_path / "worker"  # no checkout here: the flows must come from the clones
    workdir.mkdir()
    worker = subprocess.run(
        [*prefect, "worker", "start", "--pool", "spectroflow-git", "--run-once", "--limit", "2"],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=400)
    for name, run in runs.items():
        finished = wait_for_run(run.id, timeout=60)
        assert finished.state.is_completed(), worker.stdout[-3000:] + worker.stderr[-3000:]
        assert (tmp_path / name / f"{WAVS[0].name}.spect.npz").exists(), name
    with get_client(sync_client=True) as client:
        pulls = [client.read_deployment_by_name(f"spectrogram-flow/{name}").pull_steps
                 for name in runs]
    assert all(repository.as_uri() in json.dumps(steps) for steps in pulls), pulls


def test_served_flow_runs_start_as_forks_of_a_process_that_imported_them(prefect_api, tmp_path):
    """serve.py's runner starts each run with Prefect's run_flow_in_subprocess: under
    flow_runs_forked it forks a warm process instead of starting a fresh interpreter."""
    import multiprocessing

    from prefect import flow_engine

    from spectroflow.flows.spectrograms import spectrogram_flow
    from spectroflow.orchestration.forkserver import flow_runs_forked

    parameters = {"source": str(WAVS[0]), "destination": str(tmp_path), "dry_run": True}
    with flow_runs_forked():
        process = flow_engine.run_flow_in_subprocess(spectrogram_flow, parameters=parameters)
        process.join(120)
    assert type(process).__name__ == "ForkServerProcess"
    assert process.exitcode == 0
    assert flow_engine.multiprocessing is multiprocessing, "restored after the block"
