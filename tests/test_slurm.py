"""Batch jobs and Dask workers on a real SLURM cluster (the ``slurm`` fixture)."""

from __future__ import annotations

import os
import sys

import pytest
from slurm_cluster import slurm  # noqa: F401

from conftest import wait_for

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
