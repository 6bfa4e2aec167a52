#!/usr/bin/env bash
# `make slurm-down`: stop the single-host cluster that `make slurm` started (slurmd,
# slurmctld, then munged) and remove the sacct stand-in. Jobs still running are killed.
# --keep-munge: leave munged running (up.sh restarts only the SLURM daemons).
set -euo pipefail
STANDIN=/usr/local/bin/sacct
[ "$(id -u)" = 0 ] || { echo "slurm: error: run as root" >&2; exit 1; }

stop() {  # stop <name> <pid file>: SIGTERM, then wait up to 20 s
    local pid
    [ -s "$2" ] || return 0
    pid="$(cat "$2")"
    kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return 0; }
    echo "slurm: stopping $1 ($pid)"
    kill "$pid"
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "slurm: $1 did not stop in 20 s; sending SIGKILL"
        kill -9 "$pid"
    fi
    rm -f "$2"
}

if [ "${1:-}" != "--keep-munge" ] && scontrol ping >/dev/null 2>&1; then
    # Stopping slurmd does not end its jobs' processes (their slurmstepd lives on).
    jobs="$(squeue -h -t running,pending,suspended,completing -o %A 2>/dev/null | sort -u)"
    if [ -n "$jobs" ]; then
        echo "slurm: cancelling jobs $(echo $jobs)"
        scancel $jobs || true
        for _ in $(seq 100); do
            [ -z "$(squeue -h -t running,completing -o %A 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi
stop slurmd /run/slurm/slurmd.pid
stop slurmctld /run/slurm/slurmctld.pid
if [ "${1:-}" != "--keep-munge" ]; then
    stop munged /run/munge/munged.pid
    if [ -f "$STANDIN" ] && grep -q "vae-lightning sacct stand-in" "$STANDIN"; then
        rm -f "$STANDIN"
    fi
fi
echo "slurm: down"
