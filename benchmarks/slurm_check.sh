#!/usr/bin/env bash
# The SLURM check: a real one-node SLURM cluster on this machine runs the workflow through
# profiles/slurm, and sacct shows that every job went through it as its rule asked.
#
#   sudo bash benchmarks/slurm_check.sh        (root: it installs packages and starts daemons)
#
# Steps:
#   1. starts, in the background, a local run of benchmarks/slurm_check.yaml (every stage, distillation
#      too, on a tiny synthetic dataset with the demo's backbone) up to the feature store;
#   2. installs what is missing of munge, slurmctld, slurmd, slurm-client, slurmdbd and mariadb-server
#      (apt-get; no service is started by the packages) and snakemake-executor-plugin-slurm (pip, into
#      the Python that runs snakemake: $PYTHON, default .venv/bin/python; tested with 2.8.0);
#   3. starts, all under one temporary folder and on free local ports, munged, a MariaDB server,
#      slurmdbd (so that sacct works as on a real cluster), slurmctld and slurmd: one node with this
#      machine's CPUs and memory (slurmd -C) in two partitions, `cpu` (the default) and `gpu`, each
#      letting two jobs share a CPU (so that two 2-thread jobs run at once on 2 cores);
#   4. checks that `--profile profiles/slurm` is refused (profiles/default would leak into it);
#   5. runs the whole config with `--workflow-profile` on a copy of profiles/slurm whose GPU request
#      is switched off (gpu: 0, as on a CPU-only cluster; this node has no GPU), --max-threads set to
#      the node's CPUs;
#   6. benchmarks/slurm_verify.py: every job went through SLURM and ended COMPLETED on the partition
#      of its rule (gpu for the rules declaring gpu=1) with the memory, time limit and CPUs its rule
#      declared; the feature store's datasets equal the local run's bit for bit; every stage's
#      summary.json is there.
# Then it cancels what is left of its jobs, stops the daemons it started (by their pid files), removes
# the packages it installed with what their scripts made (/var/lib/mysql, the mysql user, ...) and its
# temporary folder (kept, with the logs, when the check failed). The
# last line is the verdict: `slurm check passed: N jobs` or `slurm check failed: <reason>`; the exit
# status is 0 only when it passed.

set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
PLUGIN=snakemake-executor-plugin-slurm
# What the packages' scripts make and their purge leaves behind; removed after the purge when the check
# installed the packages and these were not there before.
LEFTOVER_PATHS=(/etc/mysql /var/lib/mysql /run/mysqld /etc/munge /var/lib/munge /var/log/munge /etc/slurm /var/lib/slurm /var/log/slurm)
LEFTOVER_USERS=(mysql munge slurm)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
WORK=$(mktemp -d /tmp/embedlens-slurm.XXXXXX)
chmod 711 "$WORK"
installed=()
leftovers=()   # paths and users the package scripts made
policy_created=0
plugin_installed=0
config_linked=0
# Slurm's commands read /etc/slurm/slurm.conf: SLURM_CONF would do for this script, but the jobs' srun
# would not see it (snakemake-executor-plugin-slurm-jobstep drops SLURM_* variables). So the check
# links its slurm.conf and slurmdbd.conf there, on a machine that has none, and removes the links after.
ETC=/etc/slurm
started=()   # pid files of the daemons this check started
local_run=""  # pid of the local run while it runs in the background
verdict=""

say() { echo "[slurm check $(date +%T)] $*"; }

finish() {
    local status=$?
    [ -n "$verdict" ] || verdict="slurm check failed: interrupted (exit status $status)"
    [ -n "$local_run" ] && kill "$local_run" 2>/dev/null && wait "$local_run"
    if ((${#started[@]})); then
        command -v scancel >/dev/null && scancel --user root 2>/dev/null
        local index pid
        for ((index = ${#started[@]} - 1; index >= 0; index--)); do
            pid=$(cat "${started[index]}" 2>/dev/null) && kill "$pid" 2>/dev/null || continue
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        done
    fi
    ((config_linked)) && rm -f "$ETC/slurm.conf" "$ETC/slurmdbd.conf"
    if ((plugin_installed)); then
        "$PYTHON" -m pip uninstall --quiet --yes "$PLUGIN" snakemake-executor-plugin-slurm-jobstep >/dev/null 2>&1
    fi
    if ((${#installed[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq --auto-remove "${installed[@]}" >/dev/null 2>&1 \
            || echo "could not remove the packages this check installed: ${installed[*]}"
        local leftover
        for leftover in "${leftovers[@]}"; do
            if [[ $leftover == /* ]]; then rm -rf "$leftover"; else userdel "$leftover" 2>/dev/null; groupdel "$leftover" 2>/dev/null; fi
        done
    fi
    ((policy_created)) && rm -f /usr/sbin/policy-rc.d
    if [[ $verdict == "slurm check passed"* ]]; then
        rm -rf "$WORK"
    else
        verdict+=" (logs in $WORK)"
    fi
    echo "$verdict"
    [[ $verdict == "slurm check passed"* ]]
}
trap finish EXIT

fail() {
    verdict="slurm check failed: $*"
    exit 1
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
    local seconds=$1
    shift
    for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    return 1
}

[ "$(id -u)" = 0 ] || fail "needs root (it installs packages and starts daemons)"
[ -x "$PYTHON" ] || fail "no Python at $PYTHON (set PYTHON to the one that runs snakemake)"

# 1. the local run, up to the feature store
RUN=(--configfile benchmarks/slurm_check.yaml --replace-workflow-config --snakefile "$PWD/Snakefile")
STORE=results/synthetic/effnet_lite0/features.h5
mkdir -p "$WORK/log"
say "local run of benchmarks/slurm_check.yaml up to $STORE, in the background"
"$PYTHON" -m snakemake "${RUN[@]}" --directory "$WORK/local" --cores 1 "$STORE" >"$WORK/log/local.log" 2>&1 &
local_run=$!

# 2. packages
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || installed+=("$package")
done
if ((${#installed[@]})); then
    command -v apt-get >/dev/null || fail "apt-get is missing, and so are ${installed[*]}"
    say "installing ${installed[*]}"
    for path in "${LEFTOVER_PATHS[@]}"; do [ -e "$path" ] || leftovers+=("$path"); done
    for user in "${LEFTOVER_USERS[@]}"; do getent passwd "$user" >/dev/null || getent group "$user" >/dev/null || leftovers+=("$user"); done
    # No package may start its service (munge, mariadb, slurm*): the check starts its own.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_created=1
    fi
    apt-get update -qq >"$WORK/apt.log" 2>&1 \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${installed[@]}" >>"$WORK/apt.log" 2>&1 \
        || fail "apt-get install ${installed[*]} failed (see $WORK/apt.log)"
fi
if ! "$PYTHON" -c "import snakemake_executor_plugin_slurm" 2>/dev/null; then
    say "installing $PLUGIN"
    "$PYTHON" -m pip install --quiet "$PLUGIN" >"$WORK/pip.log" 2>&1 || fail "pip install $PLUGIN failed (see $WORK/pip.log)"
    plugin_installed=1
fi

# 3. the cluster: munge, MariaDB, slurmdbd, slurmctld, slurmd
say "starting munged, mariadbd, slurmdbd, slurmctld and slurmd in $WORK"
mkdir -p "$WORK/munge" "$WORK/state" "$WORK/spool"
chmod 711 "$WORK/munge"
MUNGE="--socket=$WORK/munge/munge.socket"
mungekey --create --keyfile "$WORK/munge/munge.key" || fail "mungekey could not create a key"
started+=("$WORK/munge/munged.pid")
munged --force "$MUNGE" --key-file="$WORK/munge/munge.key" --pid-file="$WORK/munge/munged.pid" \
    --log-file="$WORK/log/munged.log" --seed-file="$WORK/munge/munged.seed" || fail "munged did not start (see $WORK/log/munged.log)"

DB_PORT=$(free_port) DBD_PORT=$(free_port) CTLD_PORT=$(free_port) SLURMD_PORT=$(free_port)
mariadb-install-db --user=root --datadir="$WORK/mysql" --auth-root-authentication-method=normal --skip-test-db \
    >"$WORK/log/mariadb-install.log" 2>&1 || fail "mariadb-install-db failed (see $WORK/log/mariadb-install.log)"
started+=("$WORK/mysql.pid")
mariadbd --user=root --datadir="$WORK/mysql" --socket="$WORK/mysql.sock" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --pid-file="$WORK/mysql.pid" --log-error="$WORK/log/mariadb.log" --skip-grant-tables --innodb-buffer-pool-size=64M >"$WORK/log/mariadb.out" 2>&1 &
wait_for 30 mariadb-admin --socket="$WORK/mysql.sock" ping || fail "the MariaDB server did not start (see $WORK/log/mariadb.log)"

NODE=$(slurmd -C | head -1 | sed 's/ UpTime=.*//')   # NodeName=<host> CPUs=... RealMemory=...
HOST=$(sed 's/^NodeName=\([^ ]*\).*/\1/' <<<"$NODE")
CPUS=$(sed 's/.* CPUs=\([0-9]*\).*/\1/' <<<"$NODE")
cat >"$WORK/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$WORK/munge/munge.socket
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$WORK/slurmdbd.pid
LogFile=$WORK/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StorageLoc=slurm_acct_db
EOF
chmod 600 "$WORK/slurmdbd.conf"
cat >"$WORK/slurm.conf" <<EOF
ClusterName=embedlens
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$WORK/munge/munge.socket
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$WORK/munge/munge.socket
AccountingStoreFlags=job_comment
MinJobAge=3600
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
$NODE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:2
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP OverSubscribe=FORCE:2
EOF
for name in slurm.conf slurmdbd.conf; do
    # a link left by a check that was killed is removed; anything else is the machine's own
    [[ -L $ETC/$name && $(readlink "$ETC/$name") == /tmp/embedlens-slurm.* ]] && rm "$ETC/$name"
    [ -e "$ETC/$name" ] && fail "$ETC/$name exists: this machine has a SLURM set-up of its own, which the check leaves alone"
done
ln -s "$WORK/slurm.conf" "$ETC/slurm.conf" && ln -s "$WORK/slurmdbd.conf" "$ETC/slurmdbd.conf" \
    && config_linked=1 || fail "could not link slurm.conf and slurmdbd.conf into $ETC"
started+=("$WORK/slurmdbd.pid")
slurmdbd || fail "slurmdbd did not start (see $WORK/log/slurmdbd.log)"
wait_for 30 sacctmgr --immediate add cluster embedlens || fail "sacctmgr could not reach slurmdbd (see $WORK/log/slurmdbd.log)"
started+=("$WORK/slurmctld.pid")
slurmctld || fail "slurmctld did not start (see $WORK/log/slurmctld.log)"
started+=("$WORK/slurmd.pid")
slurmd || fail "slurmd did not start (see $WORK/log/slurmd.log)"
wait_for 30 bash -c '[ "$(sinfo --noheader --partition cpu --format %T)" = idle ]' \
    || fail "the node did not come up idle (see $WORK/log/slurmctld.log and slurmd.log)"
sinfo

# 4. the slurm profile with the GPU request off; --profile refused
cp -r profiles/slurm "$WORK/profile"
sed -i 's/^\(    gpu:\) 1\b/\1 0/' "$WORK/profile/config.yaml"
grep -q '^    gpu: 0' "$WORK/profile/config.yaml" || fail "profiles/slurm/config.yaml has no '    gpu: 1' line to switch off"
"$PYTHON" -m snakemake "${RUN[@]}" --directory "$WORK/refused" --profile "$WORK/profile" >"$WORK/log/refused.log" 2>&1
grep -q "workflow-profile profiles/slurm" "$WORK/log/refused.log" \
    || fail "--profile profiles/slurm was not refused although profiles/default sets cores (see $WORK/log/refused.log)"
squeue --noheader | grep -q . && fail "the refused run submitted jobs"

wait "$local_run" || fail "the local run failed (see $WORK/log/local.log)"
local_run=""

# 5. the SLURM run
say "SLURM run of benchmarks/slurm_check.yaml with --workflow-profile profiles/slurm (gpu: 0)"
"$PYTHON" -m snakemake "${RUN[@]}" --directory "$WORK/cluster" --workflow-profile "$WORK/profile" \
    --max-threads "$CPUS" --slurm-init-seconds-before-status-checks 1 >"$WORK/log/cluster.log" 2>&1 \
    || fail "the SLURM run failed (see $WORK/log/cluster.log and the SLURM logs under $WORK/cluster/.snakemake/slurm_logs)"

# 6. the verdict
sacct -X -a -S 2000-01-01 --format=JobID,Comment%60,Partition,State,Timelimit,ReqMem,AllocCPUS,Elapsed
say "checking the jobs in sacct, the feature store and the summaries"
"$PYTHON" benchmarks/slurm_verify.py "$WORK/log/cluster.log" "$WORK/cluster" "$WORK/local" | tee "$WORK/log/verify.log"
[ "${PIPESTATUS[0]}" = 0 ] || fail "$(tail -1 "$WORK/log/verify.log")"
verdict="slurm check passed: $(tail -1 "$WORK/log/verify.log")"
