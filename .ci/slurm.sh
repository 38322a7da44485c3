#!/usr/bin/env bash
# A one-host SLURM cluster for the integration test (tests/test_slurm.py), on Debian 12 as root.
#   bash .ci/slurm.sh up     install slurmctld/slurmd/slurm-client/munge, configure, start, wait for an idle node
#   bash .ci/slurm.sh down   stop the daemons by their pid files
# No cgroups (proctrack/linuxproc, task/none) and no accounting database: the executor plugin is told to read job
# states with squeue (profiles/slurm-test), and MinJobAge keeps finished jobs visible to squeue for 10 minutes.
# Safe to re-run: `up` on a healthy cluster returns at once; otherwise it stops what is left and starts afresh.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
RUN=/run/slurm
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=$RUN/slurmctld.pid
SLURMD_PID=$RUN/slurmd.pid
NODE=$(hostname -s)
WAIT_S=${SLURM_UP_TIMEOUT:-120}

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { sinfo --noheader --nodes "$NODE" --format %t 2>/dev/null | head -n1; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    # Keep the packages' maintainer scripts from starting daemons with no config (no init system here anyway).
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge
    if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; fi
}

write_config() {
    mkdir -p /etc/slurm "$STATE" "$SPOOL" "$LOGS" "$RUN"
    local cpus mem_mb hw
    cpus=$(nproc)
    # 90% of physical memory: a RealMemory above what slurmd measures would drain the node.
    mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    # The socket/core/thread layout slurmd detects, so the node does not come up "inval"; CPUs follows nproc.
    hw=$(slurmd -C | head -n1 | grep -o 'Boards=.*ThreadsPerCore=[0-9]*' || true)
    cat >"$CONF" <<EOF
# Written by .ci/slurm.sh: one host, no cgroups, no accounting database.
ClusterName=didi-ci
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# squeue must still see a job after it ends (the plugin polls every 40-180 s).
MinJobAge=600
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE CPUs=$cpus ${hw:+$hw }RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_munge() {
    if alive "$MUNGE_PID" && munge -n </dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    rm -f /run/munge/munge.socket.2 "$MUNGE_PID"
    runuser -u munge -- /usr/sbin/munged
    munge -n </dev/null | unmunge >/dev/null
}

print_logs() {
    local f
    for f in "$LOGS/slurmctld.log" "$LOGS/slurmd.log" /var/log/munge/munged.log; do
        [[ -f $f ]] && { echo "==== $f (last 40 lines)"; tail -n 40 "$f"; }
    done
    echo "==== sinfo"; sinfo -N -l 2>&1 || true
    echo "==== $CONF"; cat "$CONF" 2>/dev/null || true
}

up() {
    if alive "$CTLD_PID" && alive "$SLURMD_PID" && [[ $(node_state) == idle* || $(node_state) == mix* ]]; then
        echo "slurm.sh: cluster already up ($(node_state))"
        return
    fi
    down
    install_packages
    write_config
    start_munge
    # -c: start from clean controller state, so a node left DOWN by an earlier run does not stay down.
    slurmctld -c
    slurmd
    local waited=0 state=""
    while ((waited < WAIT_S)); do
        state=$(node_state)
        if [[ $state == idle ]]; then
            echo "slurm.sh: node $NODE idle after ${waited}s"
            sinfo
            return
        fi
        if [[ $state == drain* || $state == down* ]] && ((waited >= 10)); then
            scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
        fi
        sleep 2
        waited=$((waited + 2))
    done
    echo "slurm.sh: node $NODE not idle after ${WAIT_S}s (state: '${state:-no answer from slurmctld}')" >&2
    print_logs >&2
    exit 1
}

stop_pid() {
    local name=$1 pidfile=$2 pid i
    [[ -s $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for i in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "slurm.sh: $name ($pid) ignored SIGTERM; sending SIGKILL" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

down() {
    stop_pid slurmd "$SLURMD_PID"
    stop_pid slurmctld "$CTLD_PID"
    stop_pid munged "$MUNGE_PID"
}

case ${1:-} in
    up) up ;;
    down) down; echo "slurm.sh: stopped" ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
