"""Batch jobs and Dask workers on a real SLURM cluster (the ``slurm`` fixture)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading

import pytest

from spectroflow.flows.spectrograms import spectrogram_flow
from spectroflow.params import DaskSettings

from conftest import assert_matches_fingerprint, load_npz, prefect_server, wait_for
from slurm_cluster import slurm  # noqa: F401

pytestmark = pytest.mark.slow


def test_a_batch_job_runs_and_writes_its_file(slurm, tmp_path):  # noqa: F811
    out = tmp_path / "out.txt"
    job = slurm.run("sbatch", "--parsable", f"--chdir={tmp_path}",
                    "--wrap", f'echo "job $SLURM_JOB_ID on $SLURMD_NODENAME" > {out}').strip()
    # Not sbatch --wait: it asks about the job only every few seconds, up to 10 s here.
    wait_for(lambda: job not in slurm.jobs(), 30, f"job {job} to finish")
    assert out.read_text() == f"job {job} on localhost\n"


def test_dask_workers_run_as_slurm_jobs(slurm, tmp_path):  # noqa: F811
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    cluster = SLURMCluster(
        queue=slurm.partition, cores=1, memory="1GB", processes=1, python=sys.executable,
        scheduler_options={"host": "127.0.0.1"}, job_extra_directives=[f"--chdir={tmp_path}"],
        job_script_prologue=["export SPECTROFLOW_TEST_MARK=from-the-job-script"])
    try:
        cluster.scale(2)
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=60)
            # Library functions rather than closures: they pickle by reference and run remotely.
            job_ids = client.run(os.getenv, "SLURM_JOB_ID")
            pids = client.run(os.getpid)
            ours = {job.job_id for job in cluster.workers.values()}
            assert set(job_ids.values()) == ours and ours <= set(slurm.jobs())
            assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
            assert client.submit(os.getpid, pure=False).result(30) in pids.values()
            mark = client.submit(os.getenv, "SPECTROFLOW_TEST_MARK", pure=False).result(30)
            assert mark == "from-the-job-script"
    finally:
        cluster.close()
    wait_for(lambda: not ours & set(slurm.jobs()), 30, "the workers' jobs to leave the queue")


def _slurm_settings(slurm, tmp_path, **scaling) -> DaskSettings:  # noqa: F811
    """Workers as SLURM jobs that start in another folder and list their job ids in jobs.txt."""
    elsewhere = tmp_path / "jobs"
    elsewhere.mkdir(exist_ok=True)
    return DaskSettings(cluster_class="dask_jobqueue.SLURMCluster", worker_timeout=120, **scaling,
                        cluster_kwargs={
                            "queue": slurm.partition, "cores": 1, "memory": "1GB",
                            "processes": 1, "python": sys.executable,
                            "scheduler_options": {"host": "127.0.0.1"},
                            "job_extra_directives": [f"--chdir={elsewhere}"],
                            "job_script_prologue": [f"echo $SLURM_JOB_ID >> {tmp_path}/jobs.txt"],
                        })


def _jobs(tmp_path) -> set[str]:
    listed = tmp_path / "jobs.txt"
    return set(listed.read_text().split()) if listed.exists() else set()


@pytest.fixture(scope="module")
def real_prefect_server(tmp_path_factory):
    """One server for the module: Prefect's concurrency service, which the tasks' tags use, keeps
    talking to the first API a process used."""
    with prefect_server(tmp_path_factory.mktemp("prefect")) as (base, _):
        yield base


@pytest.mark.parametrize("scaling", [{"n_workers": 2}, {"adapt_minimum": 0, "adapt_maximum": 2}],
                         ids=["fixed", "adaptive"])
def test_the_flow_computes_in_slurm_jobs(slurm, real_prefect_server, sample_copy, tmp_path,  # noqa: F811
                                         fingerprints, monkeypatch, scaling):
    monkeypatch.chdir(tmp_path)  # "out" is relative here, and the jobs start elsewhere
    state = spectrogram_flow(source=str(sample_copy / "birdsongrec"), destination="out",
                             dask=_slurm_settings(slurm, tmp_path, **scaling), batch_size=5,
                             return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["counts"] == {"written": 20}
    for path in (tmp_path / "out").rglob("*.spect.npz"):
        assert_matches_fingerprint(load_npz(path),
                                   fingerprints[f"default/birdsongrec/Bird0/{path.name}"])
    started = _jobs(tmp_path)
    assert 1 <= len(started) <= 2, started
    wait_for(lambda: not started & set(slurm.jobs()), 60, "the workers' jobs to leave the queue")


def test_a_worker_job_cancelled_mid_run_loses_no_file(slurm, real_prefect_server, sample_copy,  # noqa: F811
                                                       tmp_path, fingerprints):
    src = tmp_path / "src"
    for i in range(5):  # 100 recordings, one a task: long enough to cancel a job in the middle
        shutil.copytree(sample_copy / "birdsongrec" / "Bird0" / "Wave", src / f"day{i}")
    out = tmp_path / "out"
    settings = _slurm_settings(slurm, tmp_path, n_workers=2)
    cancelled: list[tuple[str, int]] = []

    def cancel_one_job() -> None:
        wait_for(lambda: len(_jobs(tmp_path)) == 2 and any(out.rglob("*.spect.npz")), 120,
                 "two workers writing")
        job = sorted(_jobs(tmp_path))[0]
        slurm.run("scancel", job)
        cancelled.append((job, len(list(out.rglob("*.spect.npz")))))

    canceller = threading.Thread(target=cancel_one_job)
    canceller.start()
    state = spectrogram_flow(source=str(src), destination=str(out), dask=settings, batch_size=1,
                             return_state=True)
    canceller.join(60)
    ((_, written_then),) = cancelled
    assert written_then < 100, "the job was cancelled while the run went on"
    if not state.is_completed():  # a batch lost with its worker: the rerun computes it
        state = spectrogram_flow(source=str(src), destination=str(out), dask=settings,
                                 return_state=True)
    assert state.is_completed(), state.message
    outputs = sorted(out.rglob("*.spect.npz"))
    assert len(outputs) == 100
    for path in outputs:
        assert_matches_fingerprint(load_npz(path),
                                   fingerprints[f"default/birdsongrec/Bird0/{path.name}"])
    wait_for(lambda: not _jobs(tmp_path) & set(slurm.jobs()), 60, "every job to leave the queue")


def test_the_command_runs_on_slurm_from_its_options(slurm, real_prefect_server, sample_copy,  # noqa: F811
                                                     tmp_path, fingerprints):
    from typer.testing import CliRunner

    from spectroflow.cli import app

    kwargs = _slurm_settings(slurm, tmp_path, n_workers=1).cluster_kwargs
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "run", str(sample_copy / "gy6or6"), str(out), "--audio-format", "cbin",
        "--cluster-class", "dask_jobqueue.SLURMCluster", "--workers", "1",
        "--cluster-kwargs", json.dumps(kwargs)])
    assert result.exit_code == 0, result.output
    assert "6 written" in result.output and len(_jobs(tmp_path)) == 1
    for path in out.rglob("*.spect.npz"):
        assert_matches_fingerprint(load_npz(path),
                                   fingerprints[f"default/gy6or6/032312/{path.name}"])
