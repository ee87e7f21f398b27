"""`make cluster-test`: a rehearsal of the Kubernetes deployment on one machine, with podman.

Where this sits: k8s/ says how the pipeline runs on a cluster, docker/ builds the
image it runs. tests/test_k8s.py checks both offline; this script runs them. It
builds the CPU image (docker/Dockerfile.cpu), renders the `rehearsal` overlay
with `kubectl kustomize` and runs each rendered pod's own containers -- their
command, args, env, user, capabilities and volume mounts, read from the
rendered YAML, never copied -- in podman containers, doing what the kubelet and
the MPI Operator would do around them:

1. the preprocess Job (the Beam job) on sample data that the image's own
   `python -m preprocess.sample_data` writes onto the data "volume";
2. the MPIJob: two worker containers running sshd as uid 1000 with every
   capability dropped and no new privileges, on a private podman network with
   no way out, the operator's hostfile (/etc/mpi/hostfile, "host slots=N") and
   ssh key pair (at sshAuthMountPath) mounted as the operator mounts them, then
   the launcher's init container and its exact horovodrun command, which trains,
   evaluates and exports across the two hosts;
3. the same MPIJob on an empty runs volume with one worker killed mid-training:
   the launcher must exit non-zero within a minute with Horovod's message, and
   the next launcher (after the worker restarts, as the operator's pod would)
   must resume from the last checkpoint and finish;
4. the evaluation Job, and TensorBoard's readiness probe against the
   Deployment's TensorBoard command.

Each phase asserts real outcomes (exit codes, checkpoint files, metrics.json,
the SavedModel, log lines) and the script prints how long each took. Exit 0
when all pass; otherwise a one-line reason and the work directory with every
container's log.

What it cannot show: GPUs (the rehearsal overlay uses the CPU image and CPU
slots), a real API server, scheduler and operator, and network storage; the
volumes are host directories.

Usage (as root, from the repository root; `make cluster-test` installs podman
and friends first):  python scripts/cluster_test.py [--keep] [--work-dir DIR]
"""

import argparse
import contextlib
import json
import os
import pathlib
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
OVERLAY = ROOT / "k8s" / "overlays" / "rehearsal"
DOCKERFILE = ROOT / "docker" / "Dockerfile.cpu"
# The Dockerfile's default base, and the offline stand-in for it: a Debian
# bookworm root file system with the same Python, made with mmdebstrap.
PUBLIC_BASE = "docker.io/library/python:3.11-slim-bookworm"
STAND_IN_BASE = "localhost/cnn-stand-in-base:bookworm-py3.11"
STAND_IN_PACKAGES = "python3.11,python3.11-venv,python3.11-dev,python3-pip,ca-certificates,netbase"
HOST_CA_BUNDLE = pathlib.Path("/etc/ssl/certs/ca-certificates.crt")
# crun fails on these machines (setrlimit, hybrid cgroups); runc works.
PODMAN = ["podman", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"]
RUN = PODMAN + ["run"] + ULIMITS
PREFIX = "cnn-rehearsal"
NETWORK = f"{PREFIX}-net"
SUBNET = "10.89.231.0/24"
NAMESPACE = "default"
# The operator's mount points and file names (mpi-operator v2 controller).
MPI_CONFIG_DIR = "/etc/mpi"
KILL_AFTER_STEP = 20
LAUNCHER_EXIT_LIMIT = 60


class RehearsalError(Exception):
  """A phase did not do what the cluster would need; the message says what."""


def log(message):
  print(f"[cluster-test] {message}", flush=True)


def run(cmd, check=True, timeout=None, **kwargs):
  """Runs a command, raising RehearsalError with its output's tail when it fails."""
  result = subprocess.run(
    cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
  )
  if check and result.returncode != 0:
    raise RehearsalError(
      f"{shlex.join(cmd[:6])}... exited {result.returncode}:\n"
      f"{result.stdout[-2000:]}{result.stderr[-3000:]}"
    )
  return result


# ---- the rendered manifests ------------------------------------------------------


def render():
  """The rehearsal overlay's objects, keyed by (kind, name), as `kubectl apply -k` would send them."""
  out = run(["kubectl", "kustomize", str(OVERLAY)]).stdout
  return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}


def argv(container):
  return [str(a) for a in container.get("command", []) + container.get("args", [])]


def resolve_port(container, port):
  if isinstance(port, int):
    return port
  return {p["name"]: p["containerPort"] for p in container.get("ports", [])}[port]


def quantity_bytes(value):
  number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
  return int(float(number) * {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[unit])


class Pod:
  """Turns one rendered pod template into `podman run` arguments, container by container.

  Args:
    template: the pod template (metadata + spec) from the rendered object.
    claims: PersistentVolumeClaim name -> host directory standing in for it.
    extra_mounts: (host path, container path, read-only) the operator adds.
  """

  def __init__(self, template, claims, extra_mounts=()):
    self.spec = template["spec"]
    self.claims = claims
    self.extra_mounts = list(extra_mounts)
    self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}

  def security_args(self, container):
    """What the kubelet enforces from the pod's and container's securityContext."""
    pod_sc, sc = self.spec.get("securityContext", {}), container.get("securityContext", {})
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and uid in (None, 0):
      raise RehearsalError(f"{container['name']}: runAsNonRoot without a non-zero runAsUser")
    args = []
    if uid is not None:
      args += ["--user", f"{uid}:{gid if gid is not None else uid}"]
    if "fsGroup" in pod_sc:
      args += ["--group-add", str(pod_sc["fsGroup"])]
    caps = sc.get("capabilities", {})
    args += [a for cap in caps.get("drop", []) for a in ("--cap-drop", cap)]
    args += [a for cap in caps.get("add", []) for a in ("--cap-add", cap)]
    if sc.get("allowPrivilegeEscalation") is False:
      args += ["--security-opt", "no-new-privileges"]
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
    if seccomp not in ("RuntimeDefault", None):  # podman's default profile is the runtime default
      raise RehearsalError(f"{container['name']}: seccomp profile {seccomp} not rehearsed")
    return args

  def mount_args(self, container):
    args = []
    for m in container.get("volumeMounts", []):
      volume = self.volumes[m["name"]]
      if "persistentVolumeClaim" in volume:
        claim = volume["persistentVolumeClaim"]
        read_only = m.get("readOnly") or claim.get("readOnly")
        host = self.claims[claim["claimName"]]
        args += ["-v", f"{host}:{m['mountPath']}:{'ro' if read_only else 'rw'}"]
      elif "emptyDir" in volume and m["mountPath"] == "/dev/shm":
        args += ["--shm-size", str(quantity_bytes(volume["emptyDir"].get("sizeLimit", "64Mi")))]
      elif "emptyDir" in volume:
        args += ["--tmpfs", m["mountPath"]]
      else:
        raise RehearsalError(f"volume {m['name']}: type not rehearsed")
    for host, path, read_only in self.extra_mounts:
      args += ["-v", f"{host}:{path}:{'ro' if read_only else 'rw'}"]
    return args

  def resource_args(self, container):
    """The container's limits, as the kubelet sets them on its cgroup."""
    limits = container.get("resources", {}).get("limits", {})
    args = []
    if "memory" in limits:
      args += ["--memory", str(quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
      cpu = str(limits["cpu"])
      args += ["--cpus", str(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))]
    return args

  def run_args(self, container, image, env=()):
    args = (
      self.security_args(container) + self.resource_args(container) + self.mount_args(container)
    )
    for e in list(container.get("env", [])) + [{"name": k, "value": v} for k, v in env]:
      args += ["--env", f"{e['name']}={e['value']}"]
    if container.get("workingDir"):
      args += ["--workdir", container["workingDir"]]
    command = container.get("command", [])
    if command:  # Kubernetes' command replaces the image's entrypoint
      args += ["--entrypoint", json.dumps(command)]
    return args + [image] + [str(a) for a in container.get("args", [])]


# ---- phases ------------------------------------------------------------------------


def ensure_base(work):
  """The Dockerfile's base: the public one if it can be pulled, else the cached stand-in."""
  if run(PODMAN + ["image", "exists", PUBLIC_BASE], check=False).returncode == 0:
    return PUBLIC_BASE
  if run(PODMAN + ["pull", "-q", PUBLIC_BASE], check=False, timeout=120).returncode == 0:
    return PUBLIC_BASE
  if run(PODMAN + ["image", "exists", STAND_IN_BASE], check=False).returncode == 0:
    log(f"{PUBLIC_BASE} cannot be pulled; using the cached stand-in {STAND_IN_BASE}")
    return STAND_IN_BASE
  log(
    f"{PUBLIC_BASE} cannot be pulled; making {STAND_IN_BASE} with mmdebstrap (bookworm, Python 3.11)"
  )
  tar = work / "bookworm-base.tar"
  run(["mmdebstrap", "--variant=minbase", f"--include={STAND_IN_PACKAGES}", "bookworm", str(tar)])
  run(PODMAN + ["import", "--change", 'CMD ["/bin/bash"]', str(tar), STAND_IN_BASE])
  tar.unlink()
  return STAND_IN_BASE


def build_image(image, base, work):
  cmd = (
    PODMAN
    + ["build", "--runtime", "runc"]
    + ULIMITS
    + [
      "--layers",
      "--build-arg",
      f"BASE={base}",
      "--ignorefile",
      str(DOCKERFILE) + ".dockerignore",
      "-f",
      str(DOCKERFILE),
      "-t",
      image,
    ]
  )
  if HOST_CA_BUNDLE.is_file():  # for pip behind a TLS-intercepting proxy; a secret, not a layer
    cmd += ["--secret", f"id=pip_ca,src={HOST_CA_BUNDLE}"]
  with open(work / "logs" / "build.log", "w") as out:
    code = subprocess.run(
      cmd + [str(ROOT)], stdout=out, stderr=subprocess.STDOUT, check=False
    ).returncode
  if code != 0:
    raise RehearsalError(f"image build failed (exit {code}); log: {work / 'logs' / 'build.log'}")
  size = int(run(PODMAN + ["image", "inspect", "--format", "{{.Size}}", image]).stdout)
  return size


def run_pod_to_completion(name, pod, image, work, network="none", env=(), timeout=1800, hosts=()):
  """Runs the init containers, then the main container, as a Job's pod does; returns its log."""
  containers = pod.spec.get("initContainers", []) + pod.spec["containers"]
  outputs = []
  for c in containers:
    cname = f"{PREFIX}-{name}-{c['name']}"
    cmd = RUN + ["--rm", "--name", cname, "--network", network]
    cmd += [a for h in hosts for a in ("--add-host", h)]
    cmd += pod.run_args(c, image, env)
    result = run(cmd, check=False, timeout=timeout)
    text = result.stdout + result.stderr
    (work / "logs" / f"{name}-{c['name']}.log").write_text(text)
    if result.returncode != 0:
      raise RehearsalError(f"{name}/{c['name']} exited {result.returncode}:\n{text[-3000:]}")
    outputs.append(text)
  return outputs[-1]


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
    out = open(log_path, "w")  # pylint: disable=consider-using-with  # closed in finish_launcher
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), out

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


def main(argv_=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--work-dir", help="where the volumes and logs go (default: a new temporary directory)"
  )
  parser.add_argument("--keep", action="store_true", help="keep the work directory after a success")
  args = parser.parse_args(argv_)
  if os.geteuid() != 0:
    print(
      "cluster-test: run as root (rootful podman: static IPs on a private network)", file=sys.stderr
    )
    return 2
  for tool in ("podman", "kubectl", "mmdebstrap"):
    if shutil.which(tool) is None:
      print(f"cluster-test: {tool} not found; `make cluster-test` installs it", file=sys.stderr)
      return 2

  work = pathlib.Path(args.work_dir or tempfile.mkdtemp(prefix="cnn-cluster-test-"))
  (work / "logs").mkdir(parents=True, exist_ok=True)
  timings, started = [], time.time()

  @contextlib.contextmanager
  def phase(title):
    t0 = time.time()
    log(f"== {title}")
    yield
    timings.append((title, time.time() - t0))
    log(f"   {title}: {time.time() - t0:.0f} s")

  mpi = None
  try:
    with phase("render k8s/overlays/rehearsal"):
      objects = render()
      prep = objects[("Job", "build-tfrecords")]
      job = objects[("MPIJob", "train-cifar10")]
      evaluation = objects[("Job", "eval-cifar10")]
      tensorboard = objects[("Deployment", "tensorboard")]
      images = {
        c["image"]
        for obj in (prep, job, evaluation, tensorboard)
        for t in (
          [obj["spec"]["template"]]
          if "template" in obj["spec"]
          else [r["template"] for r in obj["spec"]["mpiReplicaSpecs"].values()]
        )
        for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]
      }
      if len(images) != 1:
        raise RehearsalError(f"the rehearsal pods use several images: {sorted(images)}")
      (image,) = images

    with phase(f"image {image} (docker/Dockerfile.cpu)"):
      base = ensure_base(work)
      size = build_image(image, base, work)
      log(f"   {image}: {size / 1e9:.2f} GB, base {base}")
      user = run(RUN + ["--rm", "--network", "none", image, "id", "-u"]).stdout.strip()
      if user != "1000":
        raise RehearsalError(f"the image runs as uid {user}, not 1000")
      if (
        run(
          RUN
          + [
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "sh",
            image,
            "-c",
            "command -v g++ || command -v make || command -v cc",
          ],
          check=False,
        ).returncode
        == 0
      ):
        raise RehearsalError("the runtime image carries a compiler")

    # The PersistentVolumeClaims: host directories owned by the pods' fsGroup,
    # as the kubelet makes a volume writable for it.
    claims = {}
    for claim in ("cnn-data", "cnn-runs"):
      claims[claim] = work / claim
      claims[claim].mkdir()
      os.chown(claims[claim], 1000, 1000)
    data, runs = claims["cnn-data"], claims["cnn-runs"]
    pod = Pod(prep["spec"]["template"], claims)
    (prep_container,) = prep["spec"]["template"]["spec"]["containers"]
    prep_flags = dict(
      t.split("=", 1) for t in argv(prep_container) if t.startswith("--") and "=" in t
    )
    dataset = prep_flags["--dataset"]

    with phase(f"preprocess Job on sample data ({dataset})"):
      # Raw files onto the data volume, as k8s/README.md's "Without internet" does.
      run(
        RUN
        + [
          "--rm",
          "--network",
          "none",
          "--user",
          "1000:1000",
          "-v",
          f"{data}:/data",
          image,
          "python",
          "-m",
          "preprocess.sample_data",
          "--out-dir",
          prep_flags["--raw-dir"],
          "--dataset",
          dataset,
        ]
      )
      text = run_pod_to_completion("build-tfrecords", pod, image, work)
      out_dir = data / pathlib.Path(prep_flags["--out-dir"]).relative_to("/data") / dataset
      metadata = json.loads((out_dir / "metadata.json").read_text())
      shards = sorted(out_dir.rglob("*.tfrecord*"))
      if not shards or metadata["dataset"] != dataset:
        raise RehearsalError(
          f"preprocess wrote no shards or wrong metadata in {out_dir}:\n{text[-2000:]}"
        )
      log(f"   {len(shards)} shards, splits {sorted(metadata['splits'])}")

    flags = train_args(job)
    model_dir = runs / pathlib.Path(flags["--model-dir"]).relative_to("/runs")
    max_steps = int(flags["--max-steps"])
    mpi = MPIJobRehearsal(job, image, work, claims)
    mpi.setup()

    with phase("MPIJob: launcher + 2 workers, train, evaluate, export"):
      for i in range(mpi.replicas):
        mpi.start_worker(i)
      for i in range(mpi.replicas):
        mpi.wait_ready(i)
      proc, out = mpi.start_launcher(1, work / "logs" / "launcher-1.log")
      code = proc.wait(timeout=1200)
      out.close()
      text = (work / "logs" / "launcher-1.log").read_text()
      if code != 0:
        raise RehearsalError(f"launcher exited {code}:\n{text[-4000:]}")
      values = assert_trained(model_dir, max_steps, text, "MPIJob")
      for i in range(mpi.replicas):  # what the workers' sshd really runs with
        status = run(PODMAN + ["exec", f"{PREFIX}-worker-{i}", "cat", "/proc/1/status"]).stdout
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uids, caps = fields["Uid"].split(), fields["CapEff"].strip()
        if set(uids) != {"1000"} or int(caps, 16) != 0 or fields["NoNewPrivs"].strip() != "1":
          raise RehearsalError(
            f"worker {i}: sshd runs with uids {uids}, capabilities {caps}, "
            f"NoNewPrivs {fields['NoNewPrivs'].strip()}"
          )
      logins = [ssh_logins(i) for i in range(mpi.replicas)]
      if not all(logins):
        raise RehearsalError(f"not every worker ran ranks (ssh logins per worker: {logins})")
      log(
        f"   exit 0; sshd as uid 1000, no capabilities, no new privileges; ssh logins per worker "
        f"{logins}; metrics {json.dumps(values)[:200]}"
      )

    with phase("MPIJob on an empty runs volume: kill worker 1 mid-training, then resume"):
      runs2 = work / "cnn-runs-2"
      runs2.mkdir()
      os.chown(runs2, 1000, 1000)
      mpi.claims = dict(claims, **{"cnn-runs": runs2})
      model_dir2 = runs2 / pathlib.Path(flags["--model-dir"]).relative_to("/runs")
      for i in range(mpi.replicas):
        mpi.start_worker(i)
      for i in range(mpi.replicas):
        mpi.wait_ready(i)
      proc, out = mpi.start_launcher(2, work / "logs" / "launcher-2.log")
      deadline = time.time() + 600
      while (latest_checkpoint_step(model_dir2) or 0) < KILL_AFTER_STEP:
        if proc.poll() is not None or time.time() > deadline:
          raise RehearsalError(
            f"no checkpoint of step >= {KILL_AFTER_STEP} before the launcher ended"
          )
        time.sleep(0.2)
      saved = latest_checkpoint_step(model_dir2)
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
      text = (work / "logs" / "launcher-2.log").read_text()
      message = "Horovod detected that one or more processes exited with non-zero status"
      if code == 0 or message not in text:
        raise RehearsalError(
          f"after the kill the launcher exited {code} without {message!r}:\n{text[-3000:]}"
        )
      at_kill = latest_checkpoint_step(model_dir2)
      if at_kill >= max_steps:
        raise RehearsalError(
          f"training had finished (step {at_kill}) before the kill; nothing to resume"
        )
      log(f"   killed worker 1 after checkpoint {saved}; launcher exited {code} in {took:.1f} s")
      # The worker's container restarts in its pod (restartPolicy OnFailure);
      # the launcher Job starts a new launcher pod (backoffLimit).
      mpi.start_worker(1)
      mpi.wait_ready(1)
      proc, out = mpi.start_launcher(3, work / "logs" / "launcher-3.log")
      code = proc.wait(timeout=1200)
      out.close()
      text = (work / "logs" / "launcher-3.log").read_text()
      resumed = re.search(r"resumed from (\S+) at step (\d+)", text)
      if code != 0 or not resumed:
        raise RehearsalError(f"the rerun exited {code}, resumed: {bool(resumed)}:\n{text[-4000:]}")
      if int(resumed.group(2)) != at_kill:
        raise RehearsalError(
          f"resumed at step {resumed.group(2)}, but the last checkpoint was {at_kill}"
        )
      assert_trained(model_dir2, max_steps, text, "resumed MPIJob")
      log(f"   {resumed.group(0)}; finished {max_steps} steps and exported")
      timings.append(("  (launcher exit after the kill)", took))

    mpi.cleanup()
    with phase("evaluation Job"):
      eval_pod = Pod(evaluation["spec"]["template"], claims)
      text = run_pod_to_completion("eval", eval_pod, image, work)
      if "precision@1" not in text:
        raise RehearsalError(f"evaluation printed no precision@1:\n{text[-2000:]}")

    with phase("TensorBoard Deployment: readiness probe"):
      run(PODMAN + ["network", "create", "--internal", "--subnet", SUBNET, NETWORK])
      tb_template = tensorboard["spec"]["template"]
      (c,) = tb_template["spec"]["containers"]
      tb_ip = SUBNET.rsplit(".", 1)[0] + ".20"
      run(
        RUN
        + ["-d", "--name", f"{PREFIX}-tensorboard", "--network", NETWORK, "--ip", tb_ip]
        + Pod(tb_template, claims).run_args(c, image)
      )
      probe = c["readinessProbe"]["httpGet"]
      url = f"http://{tb_ip}:{resolve_port(c, probe['port'])}{probe['path']}"
      deadline = time.time() + 120
      while True:
        try:
          with urllib.request.urlopen(url, timeout=5) as response:
            if 200 <= response.status < 400:
              break
        except OSError:
          pass
        if time.time() > deadline:
          logs = run(PODMAN + ["logs", f"{PREFIX}-tensorboard"], check=False)
          raise RehearsalError(
            f"TensorBoard's readiness probe {url} never answered:\n{logs.stderr[-2000:]}"
          )
        time.sleep(1)
      # It serves the runs volume: the training run's event files are listed
      # (TensorBoard scans the logdir in the background after it starts).
      listed, deadline = [], time.time() + 60
      while not listed and time.time() < deadline:
        with urllib.request.urlopen(
          f"http://{tb_ip}:{resolve_port(c, probe['port'])}/data/runs", timeout=10
        ) as response:
          listed = json.loads(response.read())
        time.sleep(1)
      if not listed:
        raise RehearsalError("TensorBoard lists no runs from the runs volume")
      log(f"   GET {url} answered; runs listed: {listed[:4]}")
  except (RehearsalError, subprocess.TimeoutExpired, KeyError, FileNotFoundError) as e:
    print(f"cluster-test: FAILED: {e}\n(logs and volumes in {work})", file=sys.stderr)
    return 1
  finally:
    if mpi is not None:
      mpi.cleanup()
    else:
      run(PODMAN + ["network", "rm", "-f", NETWORK], check=False)
    with contextlib.suppress(Exception):
      run(PODMAN + ["rm", "-f", "-t", "0", f"{PREFIX}-tensorboard"], check=False)

  log("passed; wall time per phase:")
  for title, seconds in timings:
    log(f"  {seconds:7.0f} s  {title}")
  log(f"  {time.time() - started:7.0f} s  total")
  if args.keep:
    log(f"volumes and logs kept in {work}")
  else:
    shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
