"""The smoke DAG through real SLURM jobs with ``profiles/slurm``: GPU requests, a killed job, resume.

One scenario, two Snakemake runs against the single-node cluster of ``conftest.py``:

1. ``--retries 0``: the first job of each GPU rule (``train_flow``) is cancelled with ``scancel`` while
   running. The run fails; ``keep-going`` (profile) lets every independent job finish.
2. The profile as is (``retries: 1``): the first GPU job is cancelled again, Snakemake resubmits it
   (attempt 2) and the DAG completes.

Asserted on the controller's records of every submitted job (``scontrol show job``) and on what each job's
tasks saw (a TaskProlog writes ``CUDA_VISIBLE_DEVICES``): GPU rules were submitted with ``--gpus=1`` to the
GPU partition and saw one device, every other job with neither; run 2 resubmitted no job that finished in
run 1 and left its outputs untouched; the killed job was retried; nothing is left to do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from weightflow.io import load_weights

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm"
# one Snakemake run is killed after this many seconds (so CI never hangs); slower machines may raise it
RUN_TIMEOUT_S = float(os.environ.get("WEIGHTFLOW_SLURM_RUN_TIMEOUT", "300"))


def gpu_rules() -> set[str]:
    """Rules the SLURM profile gives a GPU (``set-resources: {rule: {gpu: n}}``)."""
    prof = yaml.safe_load((PROFILE / "config.yaml").read_text())
    return {rule for rule, res in prof.get("set-resources", {}).items() if int(res.get("gpu", 0)) > 0}


def rule_of(job: dict[str, str]) -> str:
    """``Comment=rule_<name>_wildcards_<values>`` (set by the SLURM executor) → the rule name."""
    comment = job.get("Comment", "")
    assert comment.startswith("rule_"), f"job {job.get('JobId')} has no Snakemake comment: {comment!r}"
    return comment[len("rule_") :].split("_wildcards_")[0]


class Killer(threading.Thread):
    """Cancels (once per rule+wildcards) the first running job of each rule in ``rules`` after ``after_s``."""

    def __init__(self, cluster, rules: set[str], after_s: float = 2.0):
        super().__init__(daemon=True)
        self.cluster, self.rules, self.after_s = cluster, rules, after_s
        self.killed: dict[str, str] = {}  # comment -> SLURM job id
        self._done = threading.Event()

    def run(self) -> None:
        first_seen: dict[str, float] = {}
        while not self._done.wait(0.5):
            try:
                res = self.cluster.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], check=False, timeout=20)
            except subprocess.TimeoutExpired:
                continue
            for line in res.stdout.splitlines():
                job_id, _, comment = line.partition("|")
                rule = comment[len("rule_") :].split("_wildcards_")[0]
                if rule not in self.rules or rule in {rule_of({"Comment": c}) for c in self.killed}:
                    continue
                first_seen.setdefault(job_id, time.monotonic())
                if time.monotonic() - first_seen[job_id] >= self.after_s:
                    self.cluster.run(["scancel", job_id], check=False)
                    self.killed[comment] = job_id

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)


def snakemake(workdir: Path, cluster, *extra: str, profile: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake from this interpreter's environment in ``workdir``; bounded by RUN_TIMEOUT_S."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(REPO / "config" / "smoke.yaml")]
    if profile:
        cmd += [
            "--profile", str(PROFILE),
            # the local cluster has no accounting database: sacct cannot answer, squeue can (MinJobAge=3600)
            "--slurm-status-command", "squeue",
            # the plugin polls again after init, init + 10, init + 20 ... seconds while no job finishes: a start of
            # 4 s catches the ~15 s jobs of the smoke DAG at the second poll (with 1 s they wait for the third, at 33 s)
            "--slurm-init-seconds-before-status-checks", "4",
            # Snakemake's own scheduler loop (the slurm plugin times its squeue polls itself, see above)
            "--seconds-between-status-checks", "2",
            "--max-threads", str(os.cpu_count() or 1),
        ]  # fmt: skip
    cmd += list(extra)
    env = dict(os.environ)
    env.pop("SNAKEMAKE_PROFILE", None)
    env.pop("WEIGHTFLOW_SLURM_ACCOUNT", None)
    env.update(
        WEIGHTFLOW_SLURM_PARTITION="cpu",
        WEIGHTFLOW_SLURM_GPU_PARTITION="gpu",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # jobs inherit the environment
    )
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        cluster.cancel_all()
        pytest.fail(f"snakemake did not finish within {RUN_TIMEOUT_S:.0f} s (WEIGHTFLOW_SLURM_RUN_TIMEOUT):\n{out[-6000:]}")
    (workdir / f"snakemake-{time.monotonic_ns()}.out").write_text(out)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def file_mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_smoke_dag_on_slurm_gpu_requests_retry_and_resume(slurm_cluster, tmp_path):
    cluster = slurm_cluster
    gpu = gpu_rules()
    assert gpu, "profiles/slurm/config.yaml gives no rule a GPU"
    workdir = tmp_path / "work"
    workdir.mkdir()
    before = {j["JobId"] for j in cluster.jobs()}  # the fixture's readiness probe
    t0 = time.monotonic()

    # --- run 1: no retries, a GPU job is killed; independent jobs still finish (keep-going) --------------
    killer = Killer(cluster, gpu)
    killer.start()
    run1 = snakemake(workdir, cluster, "--retries", "0")
    killer.stop()
    jobs1 = [j for j in cluster.jobs() if j["JobId"] not in before]
    assert killer.killed, f"no job of {sorted(gpu)} was seen running to be killed:\n{run1.stdout[-4000:]}"
    assert run1.returncode != 0, f"run 1 should fail after its job was cancelled:\n{run1.stdout[-4000:]}"
    states1 = {j["JobId"]: j["JobState"] for j in jobs1}
    for comment, job_id in killer.killed.items():
        assert states1[job_id] == "CANCELLED", (comment, states1[job_id])
    done1 = {j["Comment"] for j in jobs1 if j["JobState"] == "COMPLETED"}
    assert done1, f"run 1 completed no job:\n{run1.stdout[-4000:]}"
    results = workdir / "results"
    mtimes1 = file_mtimes(results)

    # --- run 2: the profile as is; the GPU job is killed once more and retried --------------------------
    killer = Killer(cluster, gpu)
    killer.start()
    run2 = snakemake(workdir, cluster)
    killer.stop()
    elapsed = time.monotonic() - t0
    assert run2.returncode == 0, f"run 2 failed:\n{run2.stdout[-6000:]}"
    jobs2 = [j for j in cluster.jobs() if j["JobId"] not in before and j["JobId"] not in states1]
    all_jobs = jobs1 + jobs2
    print(f"\n{len(all_jobs)} SLURM jobs in {elapsed:.0f} s (two Snakemake runs); job run times:")
    for job in all_jobs:
        print(f"  {job['JobId']:>4} {job['JobState']:<10} {job['RunTime']} {job['Comment']}")

    # resume: nothing that finished in run 1 was submitted again, and its files were not touched
    comments2 = [j["Comment"] for j in jobs2]
    assert not done1 & set(comments2), f"run 2 redid finished jobs: {sorted(done1 & set(comments2))}"
    mtimes2 = file_mtimes(results)
    # (the killed job's own log is rewritten by its rerun)
    changed = {f for f, m in mtimes1.items() if mtimes2.get(f) != m and not any(r in f for r in gpu)}
    assert not changed, f"run 2 rewrote files of finished jobs: {sorted(changed)}"

    # retry: the job killed in run 2 was resubmitted under the same rule+wildcards and then completed
    assert killer.killed, "no GPU job was killed in run 2"
    for comment, job_id in killer.killed.items():
        attempts = [j for j in jobs2 if j["Comment"] == comment]
        assert [j["JobState"] for j in attempts] == ["CANCELLED", "COMPLETED"], (comment, attempts)
        assert attempts[0]["JobId"] == job_id

    # GPU requests: only GPU rules asked for (and saw) a GPU, in the GPU partition
    seen = {}
    for line in cluster.task_env_file.read_text().splitlines():
        job_id, _step, cvd = line.split(" ", 2)
        seen.setdefault(job_id, set()).add(cvd.partition("=")[2])
    ran_rules = set()
    for job in all_jobs:
        rule = rule_of(job)
        ran_rules.add(rule)
        tres = job.get("TresPerJob", "")
        if rule in gpu:
            assert tres == "gres:gpu:1" and job["Partition"] == "gpu", job
            if job["JobState"] == "COMPLETED":
                assert seen[job["JobId"]] == {"0"}, (rule, seen[job["JobId"]])
        else:
            assert "gpu" not in tres and job["Partition"] == "cpu", job
            if job["JobId"] in seen:
                assert seen[job["JobId"]] == {""}, (rule, seen[job["JobId"]])
    assert gpu <= ran_rules, f"the smoke DAG has no job of {sorted(gpu - ran_rules)}"

    # the DAG is complete: a dry run (no cluster) finds nothing to do, and the networks files load
    dry = snakemake(workdir, cluster, "--dry-run", "--cores", "1", profile=False)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout, dry.stdout[-3000:]
    networks = sorted(results.glob("smoke/flows/*/samples/*.pt")) + [results / "smoke/ensemble/weights.pt"]
    for path in networks:
        wf = load_weights(path)
        assert wf.weights.shape[0] > 0 and torch.isfinite(wf.weights).all(), path
