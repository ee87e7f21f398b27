"""What the MPI Operator does around an MPIJob, rehearsed with podman.

Where this sits: scripts/cluster_test.py runs the rendered MPIJob of
k8s/overlays/rehearsal with this module: the operator's hostfile and ssh key
pair, a private network with the headless Service's names, the worker pods
(sshd) and the launcher pod (its init containers, then horovodrun); and the
checks of what a finished or resumed training run leaves on the runs volume.
Pods become `podman run` arguments in cluster_pod.py.
"""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time

from cluster_pod import NETWORK
from cluster_pod import PODMAN
from cluster_pod import PREFIX
from cluster_pod import RUN
from cluster_pod import SUBNET
from cluster_pod import Pod
from cluster_pod import RehearsalError
from cluster_pod import argv
from cluster_pod import resolve_port
from cluster_pod import run

NAMESPACE = "default"
# The operator's mount points and file names (mpi-operator v2 controller).
MPI_CONFIG_DIR = "/etc/mpi"
KILL_AFTER_STEP = 20
LAUNCHER_EXIT_LIMIT = 60


def latest_checkpoint_step(model_dir):
  state = model_dir / "checkpoints" / "checkpoint"
  with contextlib.suppress(FileNotFoundError):
    match = re.search(r'^model_checkpoint_path: ".*-(\d+)"', state.read_text(), re.M)
    if match:
      return int(match.group(1))
  return None


class MPIJobRehearsal:
  """What the MPI Operator creates for one MPIJob, with podman: network, keys, hostfile, pods."""

  def __init__(self, job, image, work, claims):
    self.job, self.image, self.work, self.claims = job, image, work, claims
    self.name = job["metadata"]["name"]
    spec = job["spec"]
    self.slots = spec.get("slotsPerWorker", 1)
    self.ssh_path = spec.get("sshAuthMountPath", "/root/.ssh")
    self.launcher = spec["mpiReplicaSpecs"]["Launcher"]["template"]
    self.worker = spec["mpiReplicaSpecs"]["Worker"]["template"]
    self.replicas = spec["mpiReplicaSpecs"]["Worker"]["replicas"]
    if spec.get("mpiImplementation", "OpenMPI") != "OpenMPI":
      raise RehearsalError(
        f"{self.name}: mpiImplementation {spec['mpiImplementation']} not rehearsed"
      )
    # The headless Service's DNS names, as the operator writes them into the hostfile.
    self.hosts = [
      f"{self.name}-worker-{i}.{self.name}.{NAMESPACE}.svc" for i in range(self.replicas)
    ]
    net = SUBNET.rsplit(".", 1)[0]
    self.ips = [f"{net}.{10 + i}" for i in range(self.replicas)]
    self.launcher_ip = f"{net}.9"
    self.add_hosts = [f"{h}:{ip}" for h, ip in zip(self.hosts, self.ips)] + [
      f"{self.name}-launcher.{self.name}.{NAMESPACE}.svc:{self.launcher_ip}"
    ]

  def setup(self):
    """The operator's ConfigMap (hostfile) and Secret (ssh key pair), as files."""
    config = self.work / "mpi-config"
    config.mkdir()
    (config / "hostfile").write_text("".join(f"{h} slots={self.slots}\n" for h in self.hosts))
    keys = self.work / "ssh-auth"
    keys.mkdir()
    # The operator makes an ECDSA P-521 key in PEM and names the files id_rsa,
    # id_rsa.pub and authorized_keys; Secret files are owned by root, mode 0644
    # when sshAuthMountPath is not /root/.ssh.
    run(
      RUN
      + [
        "--rm",
        "--network",
        "none",
        "--user",
        "0",
        "-v",
        f"{keys}:/keys",
        "--entrypoint",
        "ssh-keygen",
        self.image,
        "-q",
        "-t",
        "ecdsa",
        "-b",
        "521",
        "-m",
        "PEM",
        "-N",
        "",
        "-C",
        "",
        "-f",
        "/keys/id_rsa",
      ]
    )
    shutil.copy(keys / "id_rsa.pub", keys / "authorized_keys")
    for f in keys.iterdir():
      os.chown(f, 0, 0)
      f.chmod(0o600 if self.ssh_path == "/root/.ssh" else 0o644)
    self.extra = [(str(keys), self.ssh_path, True), (str(config), MPI_CONFIG_DIR, True)]
    self.operator_env = [
      ("OMPI_MCA_orte_keep_fqdn_hostnames", "true"),
      ("OMPI_MCA_orte_default_hostfile", f"{MPI_CONFIG_DIR}/hostfile"),
      ("OMPI_MCA_plm_rsh_args", "-o ConnectionAttempts=10"),
    ]
    run(PODMAN + ["network", "rm", "-f", NETWORK], check=False)
    # --internal: the pods reach each other and nothing else.
    run(PODMAN + ["network", "create", "--internal", "--subnet", SUBNET, NETWORK])

  def start_worker(self, i):
    (c,) = self.worker["spec"]["containers"]
    pod = Pod(self.worker, self.claims, self.extra)
    name = f"{PREFIX}-worker-{i}"
    run(PODMAN + ["rm", "-f", name], check=False)
    run(
      RUN
      + [
        "-d",
        "--name",
        name,
        "--network",
        NETWORK,
        "--ip",
        self.ips[i],
        "--hostname",
        f"{self.name}-worker-{i}",
      ]
      + [a for h in self.add_hosts for a in ("--add-host", h)]
      + pod.run_args(c, self.image)
    )

  def wait_ready(self, i, timeout=60):
    """The worker's readinessProbe (tcpSocket), from the node: the host, on the pod IP."""
    (c,) = self.worker["spec"]["containers"]
    port = resolve_port(c, c["readinessProbe"]["tcpSocket"]["port"])
    deadline = time.time() + timeout
    while time.time() < deadline:
      with contextlib.suppress(OSError), socket.create_connection((self.ips[i], port), timeout=2):
        return port
      time.sleep(0.5)
    logs = run(PODMAN + ["logs", f"{PREFIX}-worker-{i}"], check=False)
    raise RehearsalError(
      f"worker {i}: nothing listens on {self.ips[i]}:{port} after {timeout} s\n"
      f"{logs.stdout[-1500:]}{logs.stderr[-1500:]}"
    )

  def start_launcher(self, attempt, log_path):
    """The launcher pod of one attempt: its init containers, then horovodrun in the background."""
    pod = Pod(self.launcher, self.claims, self.extra)
    name = f"launcher-{attempt}"
    common = ["--network", NETWORK, "--ip", self.launcher_ip, "--hostname", f"{self.name}-launcher"]
    for c in self.launcher["spec"].get("initContainers", []):
      result = run(
        RUN
        + ["--rm", "--name", f"{PREFIX}-{name}-{c['name']}"]
        + common
        + pod.run_args(c, self.image),
        check=False,
        timeout=120,
      )
      if result.returncode != 0:
        raise RehearsalError(
          f"launcher init container {c['name']} exited {result.returncode}: "
          f"{result.stdout[-1000:]}{result.stderr[-1000:]}"
        )
    (c,) = self.launcher["spec"]["containers"]
    cname = f"{PREFIX}-{name}"
    run(PODMAN + ["rm", "-f", cname], check=False)
    cmd = (
      RUN
      + ["--name", cname]
      + common
      + [a for h in self.add_hosts for a in ("--add-host", h)]
      + pod.run_args(c, self.image, self.operator_env)
    )
    out = open(log_path, "w")  # the caller closes it once the launcher has exited
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), out

  def start_pods(self):
    """Every worker pod, started and ready (the launcher's ssh needs their sshd)."""
    for i in range(self.replicas):
      self.start_worker(i)
    for i in range(self.replicas):
      self.wait_ready(i)

  def run_launcher(self, attempt, timeout=1200):
    """One launcher attempt to its end; returns its exit code and log."""
    log_path = self.work / "logs" / f"launcher-{attempt}.log"
    proc, out = self.start_launcher(attempt, log_path)
    code = proc.wait(timeout=timeout)
    out.close()
    return code, log_path.read_text()

  def check_workers_unprivileged(self):
    """What the workers' sshd really runs with: uid 1000, no capabilities, no new privileges."""
    for i in range(self.replicas):
      status = run(PODMAN + ["exec", f"{PREFIX}-worker-{i}", "cat", "/proc/1/status"]).stdout
      fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
      uids, caps = fields["Uid"].split(), fields["CapEff"].strip()
      if set(uids) != {"1000"} or int(caps, 16) != 0 or fields["NoNewPrivs"].strip() != "1":
        raise RehearsalError(
          f"worker {i}: sshd runs with uids {uids}, capabilities {caps}, "
          f"NoNewPrivs {fields['NoNewPrivs'].strip()}"
        )

  def cleanup(self):
    names = run(PODMAN + ["ps", "-a", "--format", "{{.Names}}"], check=False).stdout.split()
    for name in names:
      if name.startswith(PREFIX):
        run(PODMAN + ["rm", "-f", "-t", "0", name], check=False)
    run(PODMAN + ["network", "rm", "-f", NETWORK], check=False)


def train_args(job):
  (c,) = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
  flags = {}
  for token in argv(c):
    if token.startswith("--") and "=" in token:
      key, value = token.split("=", 1)
      flags[key] = value
  return flags


def assert_trained(model_dir, max_steps, text, what):
  """What a finished training run leaves on the runs volume and in its log."""
  metrics = model_dir / "metrics.json"
  if not metrics.is_file():
    raise RehearsalError(f"{what}: no {metrics}")
  values = json.loads(metrics.read_text())
  if not any("precision" in k for k in _flatten(values)):
    raise RehearsalError(f"{what}: metrics.json has no precision: {values}")
  if latest_checkpoint_step(model_dir) != max_steps:
    raise RehearsalError(
      f"{what}: last checkpoint is step {latest_checkpoint_step(model_dir)}, not {max_steps}"
    )
  for f in ("export/saved_model.pb", "export/labels.txt"):
    if not (model_dir / f).is_file():
      raise RehearsalError(f"{what}: no {model_dir / f}")
  if "on 2 worker(s)" not in text:
    raise RehearsalError(f"{what}: the log does not show 2 workers:\n{text[-2000:]}")
  return values


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def ssh_logins(worker):
  logs = run(PODMAN + ["logs", f"{PREFIX}-worker-{worker}"], check=False)
  return len(re.findall(r"Accepted publickey for mpiuser", logs.stdout + logs.stderr))


def kill_worker_mid_training(mpi, model_dir, max_steps):
  """Starts launcher attempt 2, kills worker 1 after a checkpoint and checks the launcher fails.

  Returns:
    (checkpoint step seen before the kill, last checkpoint step after the launcher
    exited, the launcher's exit code, seconds from the kill to the launcher's exit).
  """
  proc, out = mpi.start_launcher(2, mpi.work / "logs" / "launcher-2.log")
  deadline = time.time() + 600
  while (latest_checkpoint_step(model_dir) or 0) < KILL_AFTER_STEP:
    if proc.poll() is not None or time.time() > deadline:
      raise RehearsalError(f"no checkpoint of step >= {KILL_AFTER_STEP} before the launcher ended")
    time.sleep(0.2)
  saved = latest_checkpoint_step(model_dir)
  run(PODMAN + ["kill", f"{PREFIX}-worker-1"])
  killed = time.time()
  try:
    code = proc.wait(timeout=LAUNCHER_EXIT_LIMIT)
  except subprocess.TimeoutExpired as e:
    proc.kill()
    raise RehearsalError(
      f"the launcher still runs {LAUNCHER_EXIT_LIMIT} s after a worker died"
    ) from e
  out.close()
  took = time.time() - killed
  text = (mpi.work / "logs" / "launcher-2.log").read_text()
  message = "Horovod detected that one or more processes exited with non-zero status"
  if code == 0 or message not in text:
    raise RehearsalError(
      f"after the kill the launcher exited {code} without {message!r}:\n{text[-3000:]}"
    )
  at_kill = latest_checkpoint_step(model_dir)
  if at_kill >= max_steps:
    raise RehearsalError(
      f"training had finished (step {at_kill}) before the kill; nothing to resume"
    )
  return saved, at_kill, code, took
