"""Fixture: a real single-node SLURM cluster for the tests of this folder (see slurm_cluster.py).

Skipped, with the reason, where SLURM is not installed or the test does not run as root. CI installs SLURM
and sets ``WEIGHTFLOW_REQUIRE_SLURM=1``, which turns that skip into a failure.
"""

from __future__ import annotations

import os

import pytest
from slurm_cluster import ClusterError, SlurmCluster, missing_requirements


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    why = missing_requirements()
    if why:
        if os.environ.get("WEIGHTFLOW_REQUIRE_SLURM") == "1":
            pytest.fail(f"WEIGHTFLOW_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    # as many CPUs as the machine: oversubscribed (2x), the jobs slowed each other past the executor's second status
    # poll (18 s) and the two runs took 282 s instead of 251 s
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=os.cpu_count() or 1)
    try:
        cluster.start(timeout=60)
    except ClusterError as err:
        pytest.fail(f"single-node SLURM cluster did not start: {err}")
    try:
        yield cluster
    finally:
        cluster.stop()
