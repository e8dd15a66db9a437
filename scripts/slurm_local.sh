#!/usr/bin/env bash
# Start (or stop) a real single-node SLURM on this machine for tests: munged, slurmctld and slurmd on localhost,
# everything under one folder. Needs Debian's slurm-wlm and munge, and root.
#   scripts/slurm_local.sh start DIR    -> writes DIR/slurm.conf; export SLURM_CONF=DIR/slurm.conf to use it
#   scripts/slurm_local.sh stop DIR
set -euo pipefail
cmd=$1; dir=$(mkdir -p "$2" && cd "$2" && pwd)
if [ "$cmd" = stop ]; then
  # End the jobs first: a step whose slurmd is gone lingers as slurmstepd and srun processes.
  export SLURM_CONF="$dir/slurm.conf"
  timeout 5 scancel --full --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 50); do [ -z "$(timeout 5 squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  pids=$(cat "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/munged.pid 2>/dev/null || true)
  [ -n "$pids" ] && kill $pids 2>/dev/null
  # Wait for them to go, so that a start right after finds the ports free.
  for pid in $pids; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  done
  [ "$(readlink /run/munge/munge.socket.2)" = "$dir/munge/munge.socket.2" ] && rm -f /run/munge/munge.socket.2
  exit 0
fi
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
node=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=transferlab
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF="$dir/slurm.conf"
munged --force --socket="$dir/munge/munge.socket.2" --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" \
  --seed-file="$dir/munge/seed" 2>/dev/null || true
# The slurm daemons and clients look for munge's socket at its default path: point it at ours unless a live munged
# answers there (a socket left by an earlier run, or a symlink to one, refuses connections and hangs slurm's start).
mkdir -p /run/munge
munge -n -S /run/munge/munge.socket.2 >/dev/null 2>&1 || ln -sfn "$dir/munge/munge.socket.2" /run/munge/munge.socket.2
slurmctld -f "$dir/slurm.conf"
slurmd -f "$dir/slurm.conf"
deadline=$((SECONDS + 60))
while [ $SECONDS -lt $deadline ]; do
  if timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "slurm up: SLURM_CONF=$dir/slurm.conf"; exit 0
  fi
  sleep 0.5
done
echo "slurm did not come up in 60 s; the end of $dir/slurmctld.log and $dir/slurmd.log:" >&2
tail -n 5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2
exit 1
