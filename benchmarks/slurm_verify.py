"""The verdict of benchmarks/slurm_check.sh on a finished SLURM run: every job of the run went through
SLURM and ended COMPLETED on the partition its rule belongs to, with the memory, time and CPUs its rule
declared; the feature store equals the local run's; every stage wrote its summary.

    python benchmarks/slurm_verify.py SNAKEMAKE_LOG CLUSTER_DIR LOCAL_DIR

What each rule declared is read from Snakemake's own account of the cluster run (SNAKEMAKE_LOG, its
stderr): each job's `rule NAME:` (or `checkpoint NAME:`) block with its threads and resources (the
rule's values, evaluated on the job's inputs), followed by `Job J has been submitted with SLURM jobid
S`. What each job got is SLURM's account of it, from sacct. Prints one line per job, then `N jobs` on
success; exits 1 with the first mismatch otherwise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h5py

from embedlens.summary import StageSummary

REPO = Path(__file__).resolve().parents[1]
STORE = "results/synthetic/effnet_lite0/features.h5"
# The stages of benchmarks/slurm_check.yaml, each with the summary.json it writes.
STAGES = ("features", "overlap", "classify", "cluster", "novelty", "audit", "distill")
SACCT_FIELDS = ("JobIDRaw", "Partition", "State", "Timelimit", "ReqMem", "AllocCPUS")


class Mismatch(Exception):
    pass


def gpu_rules() -> set[str]:
    """The rules (and checkpoints) of rules/*.smk that declare gpu=1 in their resources."""
    rules = set()
    for path in sorted((REPO / "rules").glob("*.smk")):
        for name, body in re.findall(r"^(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", path.read_text(), re.M | re.S):
            if re.search(r"^\s+gpu=1,", body, re.M):
                rules.add(name)
    return rules


def submitted_jobs(log: str) -> dict[str, dict]:
    """SLURM job id -> the rule, threads and resources (mem_mb, runtime, ...) Snakemake submitted it with."""
    blocks, jobs, submitted, current = {}, {}, set(), None
    for line in log.splitlines():
        if match := re.match(r"(?:local)?(?:rule|checkpoint) (\w+):$", line):
            current = {"rule": match.group(1), "threads": 1}
        elif current is not None and (match := re.match(r"\s+(jobid|threads|resources): (.*)$", line)):
            key, value = match.groups()
            if key == "resources":
                current["resources"] = dict(item.split("=", 1) for item in value.split(", "))
            else:
                current[key] = int(value)
                if key == "jobid":
                    blocks[value] = current
        elif match := re.match(r"Job (\d+) has been submitted with SLURM jobid (\d+)", line):
            jobs[match.group(2)] = blocks[match.group(1)]
            submitted.add(match.group(1))
    unsubmitted = sorted({block["rule"] for jobid, block in blocks.items()
                          if jobid not in submitted and block["rule"] != "all"})
    if unsubmitted:
        raise Mismatch(f"jobs of rules {unsubmitted} did not go through SLURM")
    if not jobs:
        raise Mismatch("the Snakemake log names no SLURM job")
    return jobs


def sacct_jobs() -> dict[str, dict]:
    """SLURM's account of every job of this (private) cluster: JobIDRaw -> the SACCT_FIELDS."""
    out = subprocess.run(["sacct", "-X", "-a", "-S", "2000-01-01", "--parsable2", "--noheader",
                          "--format=" + ",".join(SACCT_FIELDS)], capture_output=True, text=True, check=True).stdout
    return {row[0]: dict(zip(SACCT_FIELDS, row)) for row in (line.split("|") for line in out.splitlines())}


def minutes(timelimit: str) -> int:
    """sacct's [D-]HH:MM:SS in minutes."""
    days, _, clock = timelimit.rpartition("-")
    hours, mins, _ = (int(part) for part in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + mins


def megabytes(reqmem: str) -> int:
    """sacct's ReqMem (4000M, 4G, ...) in MB."""
    return round(float(reqmem[:-1]) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[reqmem[-1]])


def check_jobs(jobs: dict[str, dict], accounted: dict[str, dict]) -> None:
    on_gpu = gpu_rules()
    for slurm_id, job in sorted(jobs.items(), key=lambda item: int(item[0])):
        got = accounted.get(slurm_id)
        if got is None:
            raise Mismatch(f"SLURM job {slurm_id} ({job['rule']}) is not in sacct")
        want = {"State": "COMPLETED", "Partition": "gpu" if job["rule"] in on_gpu else "cpu",
                "ReqMem": int(job["resources"]["mem_mb"]), "AllocCPUS": str(job["threads"]),
                "Timelimit": int(job["resources"]["runtime"])}
        have = {**got, "Timelimit": minutes(got["Timelimit"]), "ReqMem": megabytes(got["ReqMem"])}
        print(f"  {slurm_id:>4} {job['rule']:<22} " + " ".join(f"{key}={have[key]}" for key in want))
        for key, value in want.items():
            if have[key] != value:
                raise Mismatch(f"SLURM job {slurm_id} ({job['rule']}): {key} is {have[key]}, the rule declares {value}")


def check_store(cluster: Path, local: Path) -> None:
    """Every dataset of the two feature stores equal, bit for bit (attrs may hold times and paths)."""
    with h5py.File(cluster / STORE, "r") as ours, h5py.File(local / STORE, "r") as theirs:
        names: list[str] = []
        ours.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        theirs_names: list[str] = []
        theirs.visititems(lambda name, item: theirs_names.append(name) if isinstance(item, h5py.Dataset) else None)
        if sorted(names) != sorted(theirs_names):
            raise Mismatch(f"{STORE}: datasets {sorted(names)} on SLURM, {sorted(theirs_names)} locally")
        for name in names:
            a, b = ours[name][()], theirs[name][()]
            if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                raise Mismatch(f"{STORE}: dataset {name} differs between the SLURM run and the local run")
    print(f"  {STORE}: {len(names)} datasets bit-identical to the local run's")


def check_summaries(cluster: Path) -> None:
    for stage in STAGES:
        path = cluster / "results/synthetic/effnet_lite0" / stage / "summary.json"
        if not path.is_file():
            raise Mismatch(f"{path} is missing")
        if not StageSummary.read(path).tables:
            raise Mismatch(f"{path} lists no table: the stage did not run")
    print(f"  summary.json of every stage: {', '.join(STAGES)}")


def main(log_path: str, cluster: str, local: str) -> int:
    try:
        jobs = submitted_jobs(Path(log_path).read_text())
        check_jobs(jobs, sacct_jobs())
        check_store(Path(cluster), Path(local))
        check_summaries(Path(cluster))
    except Mismatch as error:
        print(error)
        return 1
    print(f"{len(jobs)} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
