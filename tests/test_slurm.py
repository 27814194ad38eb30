"""profiles/slurm on a real SLURM cluster: benchmarks/slurm_check.sh starts a one-node cluster on this
machine, runs a tiny config of every stage through the profile and checks each job in sacct. It needs
root and apt-get (or the packages already installed) and a machine without a SLURM set-up of its own;
elsewhere the test is skipped and says why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.cluster


def test_the_workflow_runs_on_a_real_slurm_cluster_as_its_rules_ask():
    if os.geteuid() != 0:
        pytest.skip("the SLURM check installs packages and starts daemons: it needs root")
    if not shutil.which("apt-get") and not (shutil.which("slurmctld") and shutil.which("mariadbd")):
        pytest.skip("the SLURM check needs apt-get to install slurm-wlm, munge and mariadb-server")
    if os.path.lexists("/etc/slurm/slurm.conf"):
        pytest.skip("this machine has a SLURM set-up of its own (/etc/slurm/slurm.conf), which the check leaves alone")
    result = subprocess.run(["bash", "benchmarks/slurm_check.sh"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=900)
    verdict = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0 and verdict.startswith("slurm check passed: "), \
        result.stdout[-6000:] + result.stderr[-2000:]
