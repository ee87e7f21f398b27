#!/bin/sh
# horovodrun's --host-discovery-script for elastic training (k8s/components/elastic,
# k8s/overlays/elastic): prints one "ip:slots" line per READY worker pod.
#
# No Kubernetes API access (the pods mount no service-account token): the
# workers' headless Service (clusterIP: None, publishNotReadyAddresses: false)
# makes the cluster DNS answer its name with the IP of every worker pod whose
# readiness probe (sshd listening) passes, and with nothing once none does.
# horovodrun runs this script every second; a worker that appears is added to
# the job, one that disappears is removed. `make cluster-test` rehearses it with
# a podman network alias standing in for the Service (scripts/cluster_elastic.py).
#
# Environment (set on the launcher container):
#   WORKERS_SERVICE   the headless Service's name (the namespace's search domain
#                     completes it), e.g. train-cifar10-elastic-workers
#   SLOTS_PER_WORKER  ranks per worker: the MPIJob's slotsPerWorker (default 1)
#
# An unknown name prints nothing and still exits 0: "no worker ready yet" is a
# state horovodrun waits through (--elastic-timeout), while a failing script
# on its first call ends the job.
set -u
: "${WORKERS_SERVICE:?WORKERS_SERVICE (the workers headless Service name) is not set}"
slots=${SLOTS_PER_WORKER:-1}
getent ahostsv4 "$WORKERS_SERVICE" | awk -v slots="$slots" '!seen[$1]++ { print $1 ":" slots }'
exit 0
