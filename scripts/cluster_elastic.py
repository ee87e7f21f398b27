"""The elastic MPIJob rehearsed with podman: a worker lost and a new one added mid-run.

Where this sits: scripts/cluster_test.py runs it after the rigid MPIJob
(cluster_mpijob.py), on the data the preprocess Job wrote. It takes the
rendered MPIJob and headless Service of k8s/overlays/rehearsal-elastic and
does what the MPI Operator and the cluster DNS would do around them: the
worker pods on a podman network where each carries the Service's name as a
network alias (aardvark-dns answers that name with every such container's IP,
as the cluster DNS answers a headless Service with its ready pods), and the
launcher's horovodrun, whose discovery script (docker/discover_hosts.sh)
resolves that name. Mid-run the worker that does not hold rank 0 is killed and
removed (`podman kill`, `podman rm`: a deleted pod): the job must go on with one worker. Then a
new worker starts, with a new address as a new pod gets; it joins the alias
only once its sshd listens (publishNotReadyAddresses: false), and the job must
grow back to two workers and finish its step budget with an evaluation. The
seconds from each change to training again are measured.
"""

import dataclasses
import re
import subprocess
import time

from cluster_mpijob import MPIJobRehearsal
from cluster_mpijob import assert_trained
from cluster_mpijob import ssh_logins
from cluster_pod import NETWORK
from cluster_pod import PODMAN
from cluster_pod import PREFIX
from cluster_pod import RUN
from cluster_pod import Pod
from cluster_pod import RehearsalError
from cluster_pod import run

# Remove a worker once training has run this many steps on both.
REMOVE_AFTER_STEP = 30
# Generous bounds for a loaded 2-core machine; a change normally takes seconds.
CHANGE_LIMIT = 180
PROGRESS = re.compile(r"step (\d+)/(\d+) loss")
REFORMED = r"world size {} -> {} at step (\d+):.*re-formed in ([\d.]+)s"


@dataclasses.dataclass
class Measured:
  """What the rehearsal saw, in seconds from the change (the watcher's clock)."""

  removed_at_step: int = 0
  shrunk_at_step: int = 0
  lost_to_reformed: float = 0.0  # worker removed -> "world size 2 -> 1" in the log
  lost_to_training: float = 0.0  # worker removed -> the first progress line after that
  reformed_shrink: float = 0.0  # the trainer's own "re-formed in" (failed op -> synced state)
  grown_at_step: int = 0
  ready_to_grown: float = 0.0  # new worker ready and in DNS -> "world size 1 -> 2"
  ready_to_training: float = 0.0  # new worker ready -> the first progress line after that
  reformed_grow: float = 0.0


class LogWatcher:
  """Follows the launcher's log; `wait` returns the first new line matching a pattern and when."""

  def __init__(self, path, proc):
    self.path, self.proc, self.pos = path, proc, 0

  def wait(self, pattern, timeout, accept=lambda m: True):
    deadline = time.time() + timeout
    while True:
      exited = self.proc.poll() is not None  # before the read: then the log is complete
      with open(self.path, "rb") as f:
        f.seek(self.pos)
        chunk = f.read()
      complete = chunk[: chunk.rfind(b"\n") + 1]  # whole lines only
      for line in complete.splitlines(keepends=True):
        self.pos += len(line)
        match = re.search(pattern, line.decode(errors="replace"))
        if match and accept(match):
          return match, time.time()
      if exited and not complete:
        raise RehearsalError(
          f"the launcher exited {self.proc.returncode} before a line matching {pattern!r}:\n"
          f"{self.tail()}"
        )
      if time.time() > deadline:
        raise RehearsalError(f"no line matching {pattern!r} within {timeout} s:\n{self.tail()}")
      time.sleep(0.1)

  def tail(self):
    return self.path.read_text(errors="replace")[-4000:]


class ElasticMPIJobRehearsal(MPIJobRehearsal):
  """The operator's pods for an elastic MPIJob; the workers answer to the Service's name in DNS.

  Args:
    job: the rendered elastic MPIJob.
    service: the rendered headless Service over its workers.
    image, work, claims: as for `MPIJobRehearsal`.
  """

  def __init__(self, job, service, image, work, claims):
    super().__init__(job, image, work, claims)
    (c,) = self.launcher["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    self.alias = service["metadata"]["name"]
    if env.get("WORKERS_SERVICE") != self.alias:
      raise RehearsalError(
        f"the launcher's WORKERS_SERVICE {env.get('WORKERS_SERVICE')!r} is not the Service "
        f"{self.alias!r}"
      )
    selector = service["spec"]["selector"]
    if selector.get("training.kubeflow.org/job-name") != self.name or service["spec"].get(
      "publishNotReadyAddresses", False
    ):
      raise RehearsalError(f"Service {self.alias} does not list only {self.name}'s ready pods")
    # One more address than the starting workers: a new pod gets a new IP.
    self.ips.append(f"{self.ips[0].rsplit('.', 1)[0]}.{10 + self.replicas}")

  def start_worker(self, i, listed=True):
    """Worker pod i; `listed`: in the Service's DNS at once (else only after `list_in_dns`)."""
    (c,) = self.worker["spec"]["containers"]
    pod = Pod(self.worker, self.claims, self.extra)
    name = f"{PREFIX}-worker-{i}"
    run(PODMAN + ["rm", "-f", name], check=False)
    alias = ["--network-alias", self.alias] if listed else []
    run(
      RUN
      + ["-d", "--name", name, "--network", NETWORK, "--ip", self.ips[i]]
      + alias
      + ["--hostname", f"{self.name}-worker-{i}"]
      + pod.run_args(c, self.image)
    )

  def list_in_dns(self, i):
    """The endpoint controller's part: a pod that became ready joins its Service's DNS name."""
    name = f"{PREFIX}-worker-{i}"
    run(PODMAN + ["network", "disconnect", NETWORK, name])
    run(PODMAN + ["network", "connect", "--ip", self.ips[i], "--alias", self.alias, NETWORK, name])

  def holds_rank_0(self, i):
    """Whether worker i runs the rank horovodrun started as rank 0 (its environment says)."""
    # -q: a match counts even if a process ended between the glob and the read.
    probe = "grep -sqzx HOROVOD_RANK=0 /proc/[0-9]*/environ"
    result = run(PODMAN + ["exec", f"{PREFIX}-worker-{i}", "sh", "-c", probe], check=False)
    return result.returncode == 0


def lose_and_gain_a_worker(mpi, model_dir, max_steps):
  """Runs the elastic launcher; removes a worker mid-run, adds a new one; returns `Measured`."""
  log_path = mpi.work / "logs" / "launcher-elastic.log"
  proc, out = mpi.start_launcher("elastic", log_path)
  watch, m = LogWatcher(log_path, proc), Measured()
  try:
    trigger, _ = watch.wait(
      PROGRESS.pattern, 600, accept=lambda x: int(x.group(1)) >= REMOVE_AFTER_STEP
    )
    m.removed_at_step = int(trigger.group(1))
    victims = [i for i in range(mpi.replicas) if not mpi.holds_rank_0(i)]
    if len(victims) != mpi.replicas - 1:
      raise RehearsalError(f"rank 0 runs on {mpi.replicas - len(victims)} workers, not one")
    victim = victims[0]
    # The new worker's pod is scheduled and its sshd started meanwhile; it joins
    # the Service's DNS name only once ready, after the loss (list_in_dns below).
    new = mpi.replicas  # worker-2: a new pod, a new address
    mpi.start_worker(new, listed=False)
    mpi.wait_ready(new)
    lost = time.time()
    # The pod's processes die (their connections close), then the pod is gone
    # (out of DNS), as when a worker pod is deleted. A node that vanishes
    # without closing them is noticed only by ssh's keepalives (docs/cluster.md).
    run(PODMAN + ["kill", f"{PREFIX}-worker-{victim}"])
    run(PODMAN + ["rm", "-f", "-t", "0", f"{PREFIX}-worker-{victim}"])
    shrunk, seen = watch.wait(REFORMED.format(2, 1), CHANGE_LIMIT)
    m.shrunk_at_step, m.reformed_shrink = int(shrunk.group(1)), float(shrunk.group(2))
    m.lost_to_reformed = seen - lost
    m.lost_to_training = watch.wait(PROGRESS.pattern, CHANGE_LIMIT)[1] - lost
    # Only now, seconds after the loss: Horovod stamps host changes in whole
    # seconds and ignores one no later than the last it has seen (the loss).
    mpi.list_in_dns(new)
    ready = time.time()
    grown, seen = watch.wait(REFORMED.format(1, 2), CHANGE_LIMIT)
    m.grown_at_step, m.reformed_grow = int(grown.group(1)), float(grown.group(2))
    m.ready_to_grown = seen - ready
    m.ready_to_training = watch.wait(PROGRESS.pattern, CHANGE_LIMIT)[1] - ready
    code = proc.wait(timeout=600)
  except (RehearsalError, subprocess.TimeoutExpired):
    proc.kill()
    raise
  finally:
    out.close()
  text = log_path.read_text(errors="replace")
  if code != 0:
    raise RehearsalError(f"the elastic launcher exited {code}:\n{text[-4000:]}")
  if m.grown_at_step >= max_steps:
    raise RehearsalError(f"the job grew only at step {m.grown_at_step}, after its budget")
  assert_trained(model_dir, max_steps, text, "elastic MPIJob")
  if not ssh_logins(new):
    raise RehearsalError("the new worker ran no rank (no ssh login)")
  return m, victim
