"""A throw-away single-node SLURM cluster (munged + slurmctld + slurmd) for the cluster tests.

Debian's ``slurmctld slurmd slurm-client munge`` packages (Slurm 22.05 on bookworm) provide the daemons; this
module writes a configuration, starts the three daemons as child processes in the foreground (so they are
ended by their PIDs), waits until the node accepts jobs, and shuts everything down again. Every wait is
bounded. The node advertises a fake GPU: ``Gres=gpu:1`` backed by a character device made with ``mknod``, so
``sbatch --gpus=1`` is scheduled and the job sees ``CUDA_VISIBLE_DEVICES`` without any GPU hardware.

Two partitions share the node: ``cpu`` (default) and ``gpu``. A ``TaskProlog`` appends one line
``<job id> <step name> CUDA_VISIBLE_DEVICES=<value>`` per task to :attr:`SlurmCluster.task_env_file`, which
shows what each job's processes actually saw.

Requirements: root (slurmd, ``/etc/slurm``, ``mknod``), and ``slurm.conf`` at ``/etc/slurm/slurm.conf``:
Snakemake's job step clears ``SLURM_*`` variables (``SLURM_CONF`` included) before its inner ``srun``.
An existing ``/etc/slurm/slurm.conf`` / ``gres.conf`` is restored on :meth:`SlurmCluster.stop`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
MUNGE_SOCKET_DIR = Path("/run/munge")
BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
NODE = "localhost"
CTLD_PORT = 6817
SLURMD_PORT = 6818


class ClusterError(RuntimeError):
    """The cluster could not be started; the message names the daemon and quotes its log."""


def missing_requirements() -> str | None:
    """Why a SLURM cluster cannot be started here (None when it can)."""
    absent = [b for b in BINARIES if _which(b) is None]
    if absent:
        return (
            f"SLURM binaries not found: {', '.join(absent)} (install with: apt-get install -y "
            "--no-install-recommends slurmctld slurmd slurm-client munge)"
        )
    if os.geteuid() != 0:
        return "the single-node SLURM cluster needs root (slurmd, /etc/slurm, mknod)"
    for port in (CTLD_PORT, SLURMD_PORT):
        if _port_in_use(port):
            return f"port {port} is in use: another SLURM daemon is running on this machine"
    return None


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class SlurmCluster:
    """Single-node cluster rooted at ``root`` (state, spool, logs, fake GPU device all live there).

    ``cpus`` defaults to this machine's CPU count; ``real_memory_mb`` to 128 GB (memory is not enforced:
    no cgroups; a large value lets the profile's real per-job requests, e.g. 16 GB for train_flow, be
    scheduled on a small CI machine). Use as a context
    manager or call :meth:`start` / :meth:`stop` (stop is idempotent and never raises on a dead daemon).
    """

    def __init__(self, root: Path, cpus: int | None = None, real_memory_mb: int | None = None, gpus: int = 1):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.real_memory_mb = real_memory_mb or 128_000
        self.gpus = gpus
        self.log_dir = self.root / "log"
        self.task_env_file = self.root / "task_env.txt"
        self._procs: dict[str, subprocess.Popen] = {}
        self._saved: dict[Path, bytes | None] = {}

    # --- configuration -------------------------------------------------------------------------------------
    def slurm_conf(self) -> str:
        r = self.root
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        return "\n".join(
            [
                "ClusterName=weightflowtest",
                f"SlurmctldHost={NODE}",
                "SlurmUser=root",
                "AuthType=auth/munge",
                f"StateSaveLocation={r}/state",
                f"SlurmdSpoolDir={r}/spool",
                f"SlurmctldPidFile={r}/slurmctld.pid",
                f"SlurmdPidFile={r}/slurmd.pid",
                f"SlurmctldLogFile={self.log_dir}/slurmctld.log",
                f"SlurmdLogFile={self.log_dir}/slurmd.log",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                f"TaskProlog={r}/task_prolog.sh",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "SchedulerType=sched/backfill",
                "ReturnToService=2",
                "MpiDefault=none",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "JobCompType=jobcomp/none",
                "DefMemPerCPU=1000",  # jobs without --mem must not take the whole node
                "MinJobAge=3600",  # finished jobs stay visible to squeue / scontrol for an hour
                "SlurmctldTimeout=30",
                "SlurmdTimeout=30",
                "SlurmdParameters=config_overrides",  # trust CPUs/RealMemory below over what slurmd detects
                "GresTypes=gpu",
                f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={self.cpus} Sockets=1 CoresPerSocket={self.cpus} "
                f"ThreadsPerCore=1 RealMemory={self.real_memory_mb}{gres} State=UNKNOWN",
                f"PartitionName=cpu Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
                f"PartitionName=gpu Nodes={NODE} Default=NO MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def gres_conf(self) -> str:
        if not self.gpus:
            return "AutoDetect=off\n"
        files = f"{self.root}/nvidia[0-{self.gpus - 1}]" if self.gpus > 1 else f"{self.root}/nvidia0"
        return f"AutoDetect=off\nNodeName={NODE} Name=gpu File={files}\n"

    def _write_files(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):
            dev = self.root / f"nvidia{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null twin standing in for a GPU
        prolog = self.root / "task_prolog.sh"
        prolog.write_text(
            "#!/bin/sh\n"
            f'echo "$SLURM_JOB_ID ${{SLURM_STEP_ID:-?}} CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-}}" '
            f">> {self.task_env_file}\n"
        )
        prolog.chmod(0o755)
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        for path, text in ((SLURM_CONF, self.slurm_conf()), (GRES_CONF, self.gres_conf())):
            if path not in self._saved:
                self._saved[path] = path.read_bytes() if path.exists() else None
            path.write_text(text)

    def _restore_files(self) -> None:
        for path, old in self._saved.items():
            if old is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(old)
        self._saved.clear()

    # --- daemons -------------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], **kw) -> None:
        out = open(self.log_dir / f"{name}.stdout", "ab")
        self._procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        out.close()

    def _daemon_log(self, name: str) -> str:
        text = ""
        for path in (self.log_dir / f"{name}.log", self.log_dir / f"{name}.stdout"):
            if path.exists():
                text += f"--- {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-20:]) + "\n"
        return text

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with status {proc.returncode}\n{self._daemon_log(name)}")

    def _start_munged(self) -> None:
        MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
        self._spawn("munged", [_which("munged"), "--foreground", "--force"], user="munge", group="munge", extra_groups=[])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            self._check_alive()
            ok = subprocess.run(
                f"{_which('munge')} -n | {_which('unmunge')}", shell=True, capture_output=True, timeout=10
            )
            if ok.returncode == 0:
                return
            time.sleep(0.2)
        raise ClusterError(f"munged did not answer within 15 s\n{self._daemon_log('munged')}")

    def start(self, timeout: float = 60) -> "SlurmCluster":
        """Write the configuration, start munged, slurmctld and slurmd; return once ``srun true`` works."""
        why = missing_requirements()
        if why:
            raise ClusterError(why)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._write_files()
            self._start_munged()
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i"])
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", NODE])
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            res = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False, timeout=10)
            state = res.stdout.strip()
            if res.returncode == 0 and state and all(s.rstrip("*") in ("idle", "mixed", "allocated") for s in state.split()):
                probe = self.run(["srun", "-p", "cpu", "-n1", "-t", "1", "true"], check=False, timeout=30)
                if probe.returncode == 0:
                    return
                state = f"srun failed: {probe.stderr.strip()}"
            time.sleep(0.5)
        raise ClusterError(
            f"SLURM node not ready after {timeout:.0f} s (last state: {state!r})\n"
            + self._daemon_log("slurmctld")
            + self._daemon_log("slurmd")
        )

    def run(self, argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client command with a timeout; ``check`` raises on a non-zero status."""
        res = subprocess.run([_which(argv[0]) or argv[0], *argv[1:]], capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller remembers (MinJobAge=3600), as ``scontrol show job`` key=value dicts."""
        res = self.run(["scontrol", "-o", "show", "job"], check=False)
        if res.returncode != 0 or "No jobs in the system" in res.stdout:
            return []
        return [_parse_oneliner(line) for line in res.stdout.splitlines() if line.strip()]

    def cancel_all(self) -> None:
        ids = [j["JobId"] for j in self.jobs() if j.get("JobState") in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")]
        if ids:
            self.run(["scancel", *ids], check=False)

    def stop(self, timeout: float = 20) -> None:
        """Cancel jobs, stop the daemons (SIGTERM, then SIGKILL after ``timeout``), restore /etc/slurm."""
        try:
            if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None:
                try:
                    self.cancel_all()
                except (subprocess.TimeoutExpired, ClusterError):
                    pass
        finally:
            for name in ("slurmd", "slurmctld", "munged"):  # reverse start order
                proc = self._procs.pop(name, None)
                if proc is None or proc.poll() is not None:
                    continue
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            self._restore_files()

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_KEY = re.compile(r"^[A-Z][A-Za-z0-9_:/]*$")


def _parse_oneliner(line: str) -> dict[str, str]:
    """One line of ``scontrol -o show job`` (``Key=value Key2=value ...``) → dict; a token without a
    ``Key=`` prefix continues the previous value (values with spaces)."""
    out: dict[str, str] = {}
    key = None
    for token in line.split(" "):
        name, eq, value = token.partition("=")
        if eq and _KEY.match(name):
            key = name
            out[key] = value
        elif key is not None and token:
            out[key] += " " + token
    return out
