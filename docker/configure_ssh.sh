#!/bin/sh
# SSH set-up shared by docker/Dockerfile and docker/Dockerfile.cpu. On the
# cluster the Kubeflow MPI Operator runs `horovodrun` in a launcher pod, which
# starts the ranks on the worker pods over ssh (Gloo: no mpirun); the workers run
# sshd in the foreground (k8s/train-cifar10-mpijob.yaml). Needs openssh-server
# and openssh-client installed; run as root at image build time.
set -eu

# The operator mounts the job's key pair at /root/.ssh from a Secret: read-only,
# and with file modes that sshd's StrictModes check rejects.
cat > /etc/ssh/sshd_config.d/mpi-operator.conf <<'EOF'
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
EOF

# Worker pods are new hosts on every run, so there is nothing to check host keys
# against, and known_hosts could not be written into the read-only mount anyway.
# Keepalives make the launcher notice a worker whose node vanished (no TCP reset)
# within about two minutes, so horovodrun fails instead of waiting forever.
# ConnectionAttempts covers the seconds in which a new worker's DNS record lags
# behind its readiness.
cat > /etc/ssh/ssh_config.d/mpi-operator.conf <<'EOF'
Host *
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    ServerAliveInterval 30
    ServerAliveCountMax 4
    ConnectionAttempts 10
EOF

# sshd's privilege-separation directory; no init system creates it in a container.
mkdir -p /run/sshd
# Host keys are generated when a worker starts (ssh-keygen -A in its command),
# so no private key ships in the image.
rm -f /etc/ssh/ssh_host_*
