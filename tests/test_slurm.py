"""profiles/slurm: what it asks of SLURM for each rule, and a real SLURM run; profiles/kubernetes' GPU
requests. benchmarks/slurm_check.sh starts a one-node cluster on this machine, runs a tiny config of
every stage through the profile and checks each job in sacct. It needs root and apt-get (or the
packages already installed) and a machine without a SLURM set-up of its own; elsewhere that test is
skipped and says why."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("slurm_verify", REPO / "benchmarks" / "slurm_verify.py")
slurm_verify = importlib.util.module_from_spec(spec)
spec.loader.exec_module(slurm_verify)


def test_the_profile_sends_the_gpu_rules_to_the_gpu_partition_and_leaves_resources_to_the_rules():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    gpu_rules = slurm_verify.gpu_rules()
    assert gpu_rules == {"extract_shard", "cluster_temi", "classify_train", "classify_crossval", "distill_fit",
                         "distill_evaluate", "distill_neighbours", "audit_duplicates", "audit_labels", "novelty_fit",
                         "novelty_quality", "novelty_score"}
    assert profile["set-resources"] == {rule: {"slurm_partition": "gpu", "gpu": 1} for rule in gpu_rules}
    # every other rule goes to the CPU partition; mem_mb, runtime and threads are the rules' own
    assert profile["default-resources"] == {"slurm_partition": "cpu"}
    assert not {"set-threads", "cores", "resources"} & set(profile)


def test_the_kubernetes_profile_gives_every_gpu_rule_a_gpu():
    profile = yaml.safe_load((REPO / "profiles" / "kubernetes" / "config.yaml").read_text())
    asking = {rule for rule, resources in profile["set-resources"].items()
              if resources.get("gpu") == 1 and resources.get("gpu_manufacturer") == "nvidia"}
    assert asking == slurm_verify.gpu_rules()


@pytest.mark.cluster

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
