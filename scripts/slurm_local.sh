#!/usr/bin/env bash
# A real Slurm on this machine, for the launcher tests and CI (Debian/Ubuntu, no systemd): one node,
# or two nodes (--nodes 2), each in its own network and UTS namespace (scripts/slurm_local_2nodes.sh).
#
#   scripts/slurm_local.sh install         apt-get install slurm-wlm (+ munge) when sbatch is missing
#   eval "$(scripts/slurm_local.sh start)"  start munged, slurmctld and slurmd (idempotent); prints
#                                         `export SLURM_CONF=...` on stdout, progress on stderr
#   scripts/slurm_local.sh status          exit 0 when the node(s) answer
#   scripts/slurm_local.sh stop            scontrol shutdown; end munged when this script started it
#   ... start|status|stop --nodes 2        the two-node cluster (et-n1, et-n2), beside the one-node one
#
# Everything lives under $EUROTRON_SLURM_DIR (default /tmp/eurotron-slurm, /tmp/eurotron-slurm2 for
# two nodes): slurm.conf, state, logs. Jobs asking for more tasks than the node has CPUs need
# `--overcommit` (configs/cluster/local.yaml sets it). Needs root (SlurmUser=root), as a CI machine or
# a container gives.
set -euo pipefail

ACTION=${1:-}
NODES=1
if [ "${2:-}" = "--nodes" ]; then NODES=${3:-}; fi
case "$NODES" in 1|2) ;; *) echo "slurm_local: --nodes takes 1 or 2 (got '$NODES')" >&2; exit 2 ;; esac
if [ "$NODES" = 2 ]; then
    DIR=${EUROTRON_SLURM_DIR:-/tmp/eurotron-slurm2}
    # Its own controller port: the one-node cluster may run beside it (slurmd ports are per namespace).
    CTLD_PORT=${EUROTRON_SLURMCTLD_PORT:-6827}
else
    DIR=${EUROTRON_SLURM_DIR:-/tmp/eurotron-slurm}
    CTLD_PORT=${EUROTRON_SLURMCTLD_PORT:-6817}
fi
CONF=$DIR/slurm.conf
SLURMD_PORT=${EUROTRON_SLURMD_PORT:-6818}

log() { echo "slurm_local: $*" >&2; }

install() {
    if command -v sbatch >/dev/null && command -v slurmctld >/dev/null; then
        log "slurm already installed ($(slurmctld -V 2>/dev/null || true))"
        return
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq slurm-wlm >/dev/null
    log "installed $(slurmctld -V 2>/dev/null || true)"
}

node_up() {
    [ -f "$CONF" ] || return 1
    local state
    state=$(SLURM_CONF=$CONF timeout 10 sinfo -h -o %T 2>/dev/null | head -n1) || return 1
    case "$state" in idle*|mix*|alloc*|completing*) return 0 ;; *) return 1 ;; esac
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$DIR/munged.ours"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    log "munged did not come up"
    exit 1
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat > "$CONF" <<EOF
# Written by scripts/slurm_local.sh: one node, root, no accounting, no cgroups.
ClusterName=eurotron-local
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job becomes eligible again cred_expire+1 seconds later (default 120 s).
AuthInfo=cred_expire=10
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool
SlurmctldPidFile=${DIR}/slurmctld.pid
SlurmdPidFile=${DIR}/slurmd.pid
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobRequeue=1
# Short scheduling and kill intervals: tests wait on dependencies, requeues and time-limit signals.
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=10
MinJobAge=600
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    if node_up; then
        log "already running ($CONF)"
        echo "export SLURM_CONF=$CONF"
        return
    fi
    command -v slurmctld >/dev/null || { log "slurm is not installed: run '$0 install' first"; exit 1; }
    mkdir -p "$DIR"
    # A half-started cluster from an earlier run: stop it before starting afresh.
    stop_daemons
    start_munge
    write_conf
    export SLURM_CONF=$CONF
    /usr/sbin/slurmctld -c -f "$CONF"
    /usr/sbin/slurmd -f "$CONF"
    for _ in $(seq 150); do
        if node_up; then
            log "node $(hostname -s) up ($(nproc) CPUs), SLURM_CONF=$CONF"
            echo "export SLURM_CONF=$CONF"
            return
        fi
        sleep 0.2
    done
    log "the node did not come up; logs in $DIR/log"
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 1
}

stop_pidfile() {
    local pidfile=$1
    [ -f "$pidfile" ] || return 0
    local pid
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
}

stop_daemons() {
    if [ -f "$CONF" ]; then
        SLURM_CONF=$CONF timeout 10 scontrol shutdown >/dev/null 2>&1 || true
    fi
    stop_pidfile "$DIR/slurmd.pid"
    stop_pidfile "$DIR/slurmctld.pid"
}

# munged is shared by every local cluster (one-node and two-node): the one that started it ends it,
# unless another cluster's daemons still use it (that one's stop ends it later, or nobody's does).
stop_munge_if_ours() {
    [ -f "$DIR/munged.ours" ] || return 0
    rm -f "$DIR/munged.ours"
    if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
        log "munged left running: another Slurm on this machine still uses it"
        return 0
    fi
    stop_pidfile /run/munge/munged.pid
}

stop() {
    stop_daemons
    stop_munge_if_ours
    log "stopped"
}

if [ "$NODES" = 2 ]; then
    # shellcheck source=scripts/slurm_local_2nodes.sh
    . "$(dirname "$0")/slurm_local_2nodes.sh"
    case "$ACTION" in
        install) install ;;
        start) start2 ;;
        stop) stop2 ;;
        status) nodes2_up ;;
        *) echo "usage: $0 install|start|stop|status [--nodes 1|2]" >&2; exit 2 ;;
    esac
    exit
fi

case "$ACTION" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) node_up ;;
    *) echo "usage: $0 install|start|stop|status [--nodes 1|2]" >&2; exit 2 ;;
esac
