#!/bin/sh
# The launcher command of the Kubeflow Trainer v2 runtime (k8s/trainer/
# horovod-runtime.yaml):  trainjob_launcher.sh horovodrun [FLAGS] RANK_COMMAND...
# Runs horovodrun with "-np" summed from the hostfile Trainer v2 writes, after
# waiting for the rank command's --data-dir to hold metadata.json, and exits 75
# when the ranks were preempted.
#
# The hostfile: Trainer v2's MPI plugin (OpenMPI) mounts a ConfigMap at
# /etc/mpi/hostfile with one "<trainjob>-<replicatedJob>-0-<i>.<trainjob> slots=N"
# line per node, N = numProcPerNode. That is the format horovodrun's --hostfile
# reads (horovod/runner/common/util/hosts.py: the first word, then the number
# after "slots="), so it is passed as it is; but Trainer sets no -np and
# horovodrun needs one: the sum of the slots, every slot a rank.
#
# Exit 75: when the ranks stop on a preemption they all exit 75 (trainers/
# preemption.py), but horovodrun exits 1 whatever its ranks did, naming only
# the first rank to fail. Exit 75 when that rank exited 75, so the launcher
# Job's podFailurePolicy can tell a preemption from a crash.
set -u
HOSTFILE=${HOSTFILE:-/etc/mpi/hostfile}
[ $# -ge 2 ] || { echo "usage: $0 horovodrun [FLAGS] RANK_COMMAND..." >&2; exit 2; }
np=$(awk -F'slots=' 'NF > 1 { n += $2 } END { print n + 0 }' "$HOSTFILE" 2>/dev/null)
if [ "${np:-0}" -le 0 ]; then
  echo "trainjob_launcher: $HOSTFILE has no '<host> slots=N' line" >&2
  exit 1
fi
for arg in "$@"; do
  case $arg in --data-dir=*) data_dir=${arg#--data-dir=} ;; esac
done
# Lets the data set's Beam job and training be applied together, as the
# MPIJob's wait-for-data init container does; the trainers trust only this file.
if [ -n "${data_dir:-}" ]; then
  until [ -f "$data_dir/metadata.json" ]; do
    echo "waiting for $data_dir/metadata.json"
    sleep 30
  done
fi
program=$1
shift
log=$(mktemp)
status=$(mktemp)
{
  "$program" -np "$np" --hostfile "$HOSTFILE" "$@" 2>&1
  echo $? >"$status"
} | tee "$log"
code=$(cat "$status")
if [ "$code" != 0 ] && grep -q '^Exit code: 75$' "$log"; then
  code=75
fi
rm -f "$log" "$status"
exit "$code"
