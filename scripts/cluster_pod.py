"""The pieces of the cluster rehearsal that stand in for the kubelet (scripts/cluster_test.py).

Where this sits: scripts/cluster_test.py renders k8s/overlays/rehearsal and runs
its pods in podman containers; this module turns one rendered pod template into
`podman run` arguments (securityContext, limits, volumes, env, command) and runs
a Job's pod to completion. cluster_image.py builds the image the pods run,
cluster_mpijob.py does what the MPI Operator does around them.
"""

import json
import os
import re
import shlex
import subprocess

# crun fails on these machines (setrlimit, hybrid cgroups); runc works.
PODMAN = ["podman", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"]
RUN = PODMAN + ["run"] + ULIMITS
# Container and network names, and the network's addresses: set both to run
# two rehearsals on one machine (two worktrees) without one removing the
# other's containers (cleanup removes every container named PREFIX*).
PREFIX = os.environ.get("CLUSTER_TEST_PREFIX", "cnn-rehearsal")
NETWORK = f"{PREFIX}-net"
SUBNET = os.environ.get("CLUSTER_TEST_SUBNET", "10.89.231.0/24")


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
