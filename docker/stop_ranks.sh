#!/bin/sh
# The training pods' preStop hook (k8s/base/train-mpijob.yaml, the Trainer v2
# runtime in k8s/trainer/): turns a pod's deletion -- a Kueue preemption (the
# job suspended), a node drain, an eviction -- into the trainers' coordinated
# stop: every rank stops after the same step, rank 0 writes a checkpoint, the
# ranks exit 75 (trainers/preemption.py) and the rerun resumes at that step.
#
# Why a hook and not the SIGTERM itself: the kubelet sends SIGTERM to a
# container's first process only. On a worker that is sshd, which exits on it,
# and its exit kills every rank in the container at once (SIGKILL: no
# checkpoint). On the launcher it is horovodrun, which on SIGTERM closes its ssh
# sessions, so the ranks lose their stdout before they can report the stop.
# The kubelet runs this hook first and sends SIGTERM only when it returns (or
# the grace period, terminationGracePeriodSeconds, runs out), so:
#   1. SIGTERM every Horovod rank of this pod, once (a process whose environment has
#      HOROVOD_RANK, as horovodrun sets it). On the launcher of an MPIJob, which
#      runs no rank, SIGTERM the ranks of the first worker in the hostfile over
#      ssh instead: one signalled rank stops them all, since the stop flag rides
#      the allreduce every step already does.
#   2. Wait until those ranks have exited, and, on a launcher, until horovodrun
#      (the container's first process) has exited too, so its ssh sessions stay
#      open for the ranks' last lines.
# Runs as the pod's user (uid 1000), who owns every process it signals.
set -u
HOSTFILE=${HOSTFILE:-/etc/mpi/hostfile}

ranks() {
  for environ in /proc/[0-9]*/environ; do
    # A process that ended meanwhile, or sshd's own, is not readable: skip it.
    if { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -q '^HOROVOD_RANK='; then
      pid=${environ#/proc/}
      echo "${pid%/environ}"
    fi
  done
}

launcher=false
tr '\0' ' ' </proc/1/cmdline | grep -q horovodrun && launcher=true

# Each rank gets one SIGTERM, however many hooks run (a worker's own, and the
# launcher's over ssh): a second one would end it at once, without its
# checkpoint. mkdir is atomic, so only the first hook to claim a rank signals it.
mkdir -p /tmp/stop_ranks 2>/dev/null
pids=$(ranks)
if [ -n "$pids" ]; then
  for pid in $pids; do
    if mkdir "/tmp/stop_ranks/$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null
    fi
  done
elif $launcher && [ -r "$HOSTFILE" ]; then
  first=$(awk 'NF { print $1; exit }' "$HOSTFILE")
  [ -n "$first" ] && ssh -o ConnectTimeout=5 "$first" "sh /workspace/docker/stop_ranks.sh" &
fi
while [ -n "$(ranks)" ]; do sleep 0.5; done
# Each rank's exit status reaches horovodrun through its ssh session; stopping
# sshd the moment the ranks are gone turned a 75 into ssh's 255 in the
# rehearsal (scripts/cluster_preempt.py). Give the sessions a moment to close.
sleep 2
if $launcher; then
  while kill -0 1 2>/dev/null; do sleep 0.5; done
fi
exit 0
