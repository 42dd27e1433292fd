"""A real SLURM cluster on 127.0.0.1 for the tests: munged, slurmctld and slurmd as background
processes with their key, configuration, state and logs in a temporary folder.

Use it by importing the fixture: ``from slurm_cluster import slurm  # noqa: F401``. It installs
Debian's ``slurm-wlm`` and ``munge`` when they are missing and we are root, and skips otherwise.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import free_port, wait_for

PACKAGES = ("slurm-wlm", "munge")
# The daemons live in sbin, which is not on every PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])

CONFIG = """\
ClusterName=spectroflow
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.sock
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
# SIGKILL a cancelled job's processes 5 s after SIGTERM, not 30: bounds the teardown.
KillWait=5
ReturnToService=2
# More CPUs and memory than this machine has, so that several one-core jobs run side by side.
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=8192 State=UNKNOWN
PartitionName={partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """The running cluster: pass ``env`` to SLURM's clients (sbatch, squeue, ...)."""

    folder: Path
    partition: str = "debug"
    conf: Path = field(init=False)
    env: dict[str, str] = field(init=False)
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.conf = self.folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *command: str) -> str:
        """A SLURM client command's output; raises, with its stderr, if it fails."""
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=30)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def jobs(self) -> list[str]:
        """The ids of the jobs in the queue (pending, running or completing)."""
        return self.run("squeue", "-h", "-o", "%i").split()

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
                         for log in sorted(self.folder.glob("*.log")))

    def start(self) -> None:
        (self.folder / "state").mkdir()
        (self.folder / "spool").mkdir()
        self.conf.write_text(CONFIG.format(folder=self.folder, partition=self.partition,
                                           ctld_port=free_port(), slurmd_port=free_port()))
        key, munge_log = self.folder / "munge.key", self.folder / "munged.log"
        _check_call(["mungekey", "-c", "-k", str(key)], self.folder)
        # munged's parent exits once the socket is ready (or with the error): that is the event.
        # --force: it refuses a socket in a private folder, which pytest's temporary folders are.
        _check_call(["munged", "--force", f"--key-file={key}",
                     f"--socket={self.folder}/munge.sock", f"--pid-file={self.folder}/munged.pid",
                     f"--log-file={munge_log}", f"--seed-file={self.folder}/munged.seed"],
                    self.folder)
        for name, command in (("slurmctld", ["slurmctld", "-D", "-c"]),
                              ("slurmd", ["slurmd", "-D", "-N", "localhost"])):
            with open(self.folder / f"{name}.log", "wb") as log:
                # Own session: a Ctrl-C on pytest must not stop them before the teardown cancels
                # the jobs.
                self.daemons[name] = subprocess.Popen(
                    [shutil.which(command[0], path=SEARCH_PATH) or command[0], *command[1:]],
                    env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def node_idle() -> bool:
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.logs()}")
            done = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env,
                                  capture_output=True, text=True, timeout=30)
            return done.stdout.strip() == "idle"

        # SLURM announces no readiness: ask sinfo until the node is idle.
        try:
            wait_for(node_idle, 60, "the SLURM node to be idle")
        except AssertionError as error:
            raise RuntimeError(f"{error}; the daemons' logs:\n{self.logs()}") from None

    def stop(self) -> None:
        """Cancel every job, then stop the daemons, then kill whatever a job left behind."""
        ctld = self.daemons.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            try:
                if jobs := self.jobs():
                    self.run("scancel", *jobs)
                # Job processes outlive the daemons: leave them time to go (SIGKILL at KillWait).
                wait_for(lambda: not self.jobs(), 30, "the cancelled jobs to leave the queue")
            except (RuntimeError, AssertionError, subprocess.TimeoutExpired):
                pass  # the sweep below kills what is left
        for name in ("slurmd", "slurmctld"):
            if name in self.daemons:
                _stop(self.daemons[name].pid)
                self.daemons[name].wait()
        munged_pid = self.folder / "munged.pid"
        if munged_pid.exists():
            _stop(int(munged_pid.read_text()))
        for pid in self._job_processes():
            _stop(pid, (signal.SIGKILL,))

    def _job_processes(self) -> list[int]:
        """Processes of this cluster's jobs: slurmstepd and what the job scripts started, which
        inherit the submitting environment (and so ``SLURM_CONF``) and get ``SLURM_JOB_ID``."""
        ours = f"SLURM_CONF={self.conf}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
                comm = (proc / "comm").read_text().strip()
            except OSError:
                continue  # gone, or not ours to read
            if ours in environ and (comm == "slurmstepd"
                                    or any(v.startswith(b"SLURM_JOB_ID=") for v in environ)):
                found.append(int(proc.name))
        return found


def _check_call(command: list[str], folder: Path) -> None:
    done = subprocess.run([shutil.which(command[0], path=SEARCH_PATH) or command[0], *command[1:]],
                          capture_output=True, text=True, timeout=60, cwd=folder)
    if done.returncode:
        logs = "".join(log.read_text(errors="replace") for log in folder.glob("munged.log"))
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr}{logs}")


def _stop(pid: int, signals=(signal.SIGTERM, signal.SIGKILL), timeout: float = 10) -> None:
    """Each signal in turn until ``pid`` exits, waiting at most ``timeout`` seconds after each. A
    pidfd makes the wait an event, for processes that are not our children too, and is immune to
    pid reuse."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        for sig in signals:
            try:
                signal.pidfd_send_signal(fd, sig)
            except ProcessLookupError:
                return
            if select.select([fd], [], [], timeout)[0]:
                return
    finally:
        os.close(fd)


def _ensure_installed() -> None:
    """Install SLURM and munge with apt if they are missing; skip where that cannot be done."""
    if os.geteuid() != 0:
        pytest.skip("SLURM tests need root: slurmd runs each job as its user")
    if shutil.which("slurmctld", path=SEARCH_PATH) and shutil.which("munged", path=SEARCH_PATH):
        return
    if not shutil.which("apt-get"):
        pytest.skip(f"SLURM is not installed and there is no apt-get to install {PACKAGES}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode:
            pytest.skip(f"could not install {' '.join(PACKAGES)}: {done.stderr[-2000:]}")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[SlurmCluster]:
    """A SLURM cluster with one node (``localhost``, 8 CPUs declared) in one partition.

    ``SLURM_CONF`` is set in ``os.environ`` for the session, because dask-jobqueue runs sbatch,
    squeue and scancel with this process's environment. At teardown every job is cancelled and
    no process of the cluster or of its jobs is left running.
    """
    _ensure_installed()
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    with pytest.MonkeyPatch.context() as patch:
        try:
            cluster.start()
            patch.setenv("SLURM_CONF", str(cluster.conf))
            yield cluster
        finally:
            cluster.stop()
