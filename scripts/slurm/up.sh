#!/usr/bin/env bash
# `make slurm`: a single-host SLURM cluster on localhost (munged, slurmctld, slurmd as root),
# for trying hydra/launcher=slurm and for the cluster tests (tests/test_slurm.py).
# Installs Debian's slurm-wlm and munge when missing. Idempotent: running daemons are kept,
# and restarted only when the generated slurm.conf changed. Stop with `make slurm-down`.
# Written for a machine without systemd (containers, CI); see docs/slurm-local.md.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CONF=/etc/slurm/slurm.conf
STANDIN=/usr/local/bin/sacct
WAIT_S=${SLURM_UP_WAIT_S:-60}

say() { echo "slurm: $*"; }
die() { echo "slurm: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the daemons and the packages need it), e.g. sudo make slurm"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# --- munge: the key and socket must belong to the munge user, and munged runs as it.
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# --- slurm.conf: the node line as slurmd measures this machine, named localhost.
node_line="$(slurmd -C | head -1)"   # NodeName=<host> CPUs=.. ... RealMemory=<MB>
cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")"
memory="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")"
[ -n "$cpus" ] && [ -n "$memory" ] || die "could not read CPUs/RealMemory from 'slurmd -C': $node_line"
node="NodeName=localhost NodeAddr=127.0.0.1 ${node_line#NodeName=* } State=UNKNOWN"
new_conf="$(sed -e "s|@NODE@|$node|" -e "s|@DEF_MEM_PER_CPU@|$((memory / cpus))|" \
    "$HERE/slurm.conf.in")"
install -d /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
conf_changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
    [ -f "$CONF" ] && ! grep -q "scripts/slurm/up.sh" "$CONF" && cp "$CONF" "$CONF.before-vae"
    printf '%s\n' "$new_conf" >"$CONF"
    conf_changed=1
    say "wrote $CONF ($node)"
fi

# --- sacct: without accounting the real one fails and submitit cannot see job states.
if grep -q '^AccountingStorageType=accounting_storage/none' "$CONF"; then
    if [ ! -e "$STANDIN" ] || grep -q "vae-lightning sacct stand-in" "$STANDIN"; then
        install -m 0755 "$HERE/sacct" "$STANDIN"
    else
        say "warning: $STANDIN exists and is not ours; left as is"
    fi
fi

# --- the daemons.
running() {  # running <pid file>
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}
if [ "$conf_changed" = 1 ] && { running /run/slurm/slurmctld.pid || running /run/slurm/slurmd.pid; }; then
    say "configuration changed: restarting the daemons"
    "$HERE/down.sh" --keep-munge
fi
started=$(date +%s.%N)
if ! running /run/slurm/slurmctld.pid; then
    say "starting slurmctld"
    slurmctld
fi
if ! running /run/slurm/slurmd.pid; then
    say "starting slurmd"
    slurmd
fi

# --- ready when the node is idle (or already running jobs).
deadline=$(( $(date +%s) + WAIT_S ))
while :; do
    state="$(sinfo -h -n localhost -o %T 2>/dev/null || true)"
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*) scontrol update NodeName=localhost State=RESUME 2>/dev/null || true ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        die "node not idle after ${WAIT_S}s (state: '${state:-no answer}'); see /var/log/slurm/"
    fi
    sleep 0.5
done
say "up: node localhost $state ($cpus CPUs, $memory MB) after $(printf "%.1f" "$(echo "$(date +%s.%N) - $started" | bc)") s"
sinfo
