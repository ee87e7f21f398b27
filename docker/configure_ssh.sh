#!/bin/sh
# Non-root user and SSH set-up shared by docker/Dockerfile and docker/Dockerfile.cpu.
# On the cluster the Kubeflow MPI Operator runs `horovodrun` in a launcher pod,
# which starts the ranks on the worker pods over ssh (Gloo: no mpirun); the
# workers run sshd in the foreground as this same user (k8s/base/train-mpijob.yaml).
# Everything runs as uid 1000 with every capability dropped (Pod Security
# "restricted"), the way the operator's own images do it: sshd listens on 2222
# (no privileged port), needs no privilege separation (it only logs in the user
# it runs as), and uses the job's key pair, which the operator mounts at
# /home/mpiuser/.ssh (sshAuthMountPath), as its host key too.
# Needs openssh-server and openssh-client installed; run as root at image build time.
set -eu

# Some bases already have a uid 1000 (ubuntu:24.04 and the nvidia/cuda images on
# it ship "ubuntu"); the manifests' runAsUser is 1000, so it becomes mpiuser.
existing=$(getent passwd 1000 | cut -d: -f1 || true)
if [ -n "$existing" ]; then
  userdel --remove "$existing" 2>/dev/null || userdel "$existing"
  getent group 1000 >/dev/null && groupdel "$(getent group 1000 | cut -d: -f1)" || true
fi
useradd --uid 1000 --user-group --create-home --home-dir /home/mpiuser --shell /bin/bash mpiuser

# A complete config of its own (sshd -f), not a drop-in: Debian's sshd_config
# turns on PAM, which a non-root sshd cannot use. The key files come from a
# Secret volume, owned by root and group/world readable: StrictModes would
# reject them, and ssh only objects to loose modes on files the user owns.
cat > /etc/ssh/sshd_config_mpi <<'CONF'
Port 2222
HostKey /home/mpiuser/.ssh/id_rsa
AuthorizedKeysFile /home/mpiuser/.ssh/authorized_keys
PidFile /tmp/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers mpiuser
CONF

# Worker pods are new hosts on every run, so there is nothing to check host keys
# against, and known_hosts could not be written into the read-only mount anyway.
# Keepalives make the launcher notice a worker whose node vanished (no TCP reset)
# within about two minutes, so horovodrun fails instead of waiting forever.
# ConnectionAttempts covers the seconds in which a new worker's DNS record lags
# behind its readiness.
cat > /etc/ssh/ssh_config.d/mpi-operator.conf <<'CONF'
Host *
    Port 2222
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    ServerAliveInterval 30
    ServerAliveCountMax 4
    ConnectionAttempts 10
CONF

# No host key ships in the image (the package's postinst made some).
rm -f /etc/ssh/ssh_host_*
