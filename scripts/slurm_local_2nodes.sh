# Sourced by scripts/slurm_local.sh for `--nodes 2`: a real two-node Slurm on one machine.
#
# Each node is a network namespace (et-n1, et-n2) whose slurmd also runs in its own UTS namespace
# (hostname = node name) and mount namespace (a private /etc/hosts and /etc/resolv.conf bind-mounted
# over the real ones, which are never edited). A bridge in the root namespace joins them:
#
#   root namespace: etbr0 10.77.0.1 (slurmctld, sbatch/scontrol of the tests)
#     veth et-n1-h <-> et0 10.77.0.11 in netns et-n1 (slurmd -N et-n1, its job steps and ranks)
#     veth et-n2-h <-> et0 10.77.0.12 in netns et-n2
#
# Nothing routes beyond the bridge, so no traffic leaves the machine. munge's socket is a file, shared
# by all namespaces. Jobs see the node names resolve (MASTER_ADDR=et-n1) and talk gloo over et0.

NET=${EUROTRON_SLURM2_NET:-10.77.0}   # a /24 this script owns
BRIDGE=etbr0
NODE_NAMES=(et-n1 et-n2)

node_ip() { echo "$NET.$((10 + $1))"; }   # node index 1, 2 -> .11, .12

write_conf2() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    # Both nodes share this machine's memory: each declares under half of it.
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.45)}' /proc/meminfo)
    mkdir -p "$DIR/state" "$DIR/log" "$DIR/spool-${NODE_NAMES[0]}" "$DIR/spool-${NODE_NAMES[1]}"
    {
        echo "127.0.0.1 localhost"
        echo "$NET.1 ${host}-ctld"
        for i in 1 2; do echo "$(node_ip $i) ${NODE_NAMES[$((i - 1))]}"; done
    } > "$DIR/hosts"
    # No name server is reachable from the nodes: a lookup the hosts file cannot answer (c10d's reverse
    # lookup of an IPv4-mapped IPv6 peer) must fail at once, not after 10 s of DNS timeouts per peer.
    printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > "$DIR/resolv.conf"
    cat > "$CONF" <<EOF
# Written by scripts/slurm_local.sh --nodes 2: two nodes in network namespaces, root, no accounting.
ClusterName=eurotron-local2
SlurmctldHost=${host}($NET.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=${DIR}/state
# %n: each slurmd its own spool, pid and log file.
SlurmdSpoolDir=${DIR}/spool-%n
SlurmctldPidFile=${DIR}/slurmctld.pid
SlurmdPidFile=${DIR}/slurmd-%n.pid
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobRequeue=1
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=10
MinJobAge=600
# A node whose slurmd stops answering is marked down (and its jobs end) within ~30 s, not 5 min.
SlurmdTimeout=30
NodeName=${NODE_NAMES[0]} NodeHostname=${NODE_NAMES[0]} NodeAddr=$(node_ip 1) CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
NodeName=${NODE_NAMES[1]} NodeHostname=${NODE_NAMES[1]} NodeAddr=$(node_ip 2) CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${NODE_NAMES[0]},${NODE_NAMES[1]} Default=YES MaxTime=INFINITE State=UP
EOF
}

net_up() {
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local i name
    for i in 1 2; do
        name=${NODE_NAMES[$((i - 1))]}
        ip netns add "$name"
        ip link add "$name-h" type veth peer name et0 netns "$name"
        ip link set "$name-h" master "$BRIDGE" up
        ip -n "$name" addr add "$(node_ip $i)/24" dev et0
        ip -n "$name" link set lo up
        ip -n "$name" link set et0 up
        ip -n "$name" route add default via "$NET.1"
    done
    touch "$DIR/net.ours"
}

net_down() {
    local name pids
    for name in "${NODE_NAMES[@]}"; do
        if ip netns list 2>/dev/null | grep -qw "$name"; then
            # Whatever still runs in the node (a step the shutdown did not reach): ended first.
            pids=$(ip netns pids "$name" 2>/dev/null || true)
            [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
            ip link del "$name-h" 2>/dev/null || true
            ip netns del "$name" 2>/dev/null || true
        fi
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -f "$DIR/net.ours"
}

start_slurmd_in() {
    local name=$1
    # UTS: hostname = node name; mount: the private hosts file (the machine's /etc/hosts stays as is).
    # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup tree slurmd insists on.
    unshare --uts --mount --propagation private nsenter --net="/run/netns/$name" \
        sh -c 'hostname "$1" && mount --bind "$2/hosts" /etc/hosts && mount --bind "$2/resolv.conf" /etc/resolv.conf &&
               exec /usr/sbin/slurmd -f "$3" -N "$1"' \
        sh "$name" "$DIR" "$CONF"
}

nodes2_up() {
    [ -f "$CONF" ] || return 1
    local states
    states=$(SLURM_CONF=$CONF timeout 10 sinfo -h -N -o %T 2>/dev/null) || return 1
    [ "$(echo "$states" | grep -cE '^(idle|mix|alloc|completing)')" -eq 2 ]
}

stop_slurmds2() {
    local name
    for name in "${NODE_NAMES[@]}"; do stop_pidfile "$DIR/slurmd-$name.pid"; done
}

start2() {
    if nodes2_up; then
        log "two-node cluster already running ($CONF)"
        echo "export SLURM_CONF=$CONF"
        return
    fi
    command -v slurmctld >/dev/null || { log "slurm is not installed: run '$0 install' first"; exit 1; }
    command -v ip >/dev/null && command -v unshare >/dev/null || { log "needs ip (iproute2) and unshare"; exit 1; }
    mkdir -p "$DIR"
    stop2 >/dev/null 2>&1 || true  # a half-started cluster from an earlier run
    # Any failure from here on tears down what was started (the EXIT trap is cleared on success).
    trap 'log "start failed; tearing down"; stop2 || true' EXIT
    start_munge
    write_conf2
    net_up
    export SLURM_CONF=$CONF
    /usr/sbin/slurmctld -c -f "$CONF"
    local name
    for name in "${NODE_NAMES[@]}"; do start_slurmd_in "$name"; done
    for _ in $(seq 150); do
        if nodes2_up; then
            trap - EXIT
            log "nodes ${NODE_NAMES[*]} up ($(nproc) CPUs each, $NET.11-12), SLURM_CONF=$CONF"
            echo "export SLURM_CONF=$CONF"
            return
        fi
        sleep 0.2
    done
    trap - EXIT
    log "the nodes did not come up; logs in $DIR/log"
    SLURM_CONF=$CONF timeout 10 sinfo -N >&2 || true
    tail -n 20 "$DIR"/log/*.log >&2 || true
    stop2 || true
    exit 1
}

stop2() {
    if [ -f "$CONF" ]; then
        SLURM_CONF=$CONF timeout 10 scontrol shutdown >/dev/null 2>&1 || true
    fi
    stop_slurmds2
    stop_pidfile "$DIR/slurmctld.pid"
    net_down
    stop_munge_if_ours
    log "stopped the two-node cluster"
}
