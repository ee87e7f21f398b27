"""The Kubeflow Trainer v2 runtime rehearsed with podman: its launcher command against its node pods.

Where this sits: scripts/cluster_test.py runs it after the MPIJob phases, on
the data the preprocess Job wrote. It takes the rendered ClusterTrainingRuntime
and TrainJob of k8s/overlays/rehearsal-trainjob and does what Trainer v2.3's
controller and JobSet would do around them (pkg/runtime/framework/plugins/mpi
and jobset in kubeflow/trainer):

- the TrainJob's trainer.args and trainer.resourcesPerNode go into the
  runtime's containers named "node": args into the launcher's (the job labelled
  trainjob-ancestor-step: trainer), resources into the launcher's and, since
  runLauncherAsNode is set, every node's;
- numNodes pods train: the launcher and numNodes - 1 node pods;
- the hostfile at /etc/mpi/hostfile has one
  "<trainjob>-<replicatedJob>-0-<i>.<trainjob> slots=<numProcPerNode>" line per
  training pod, the launcher first, and the names resolve to the pods;
- the ssh key pair is mounted at sshAuthMountPath in every pod (owned by root,
  the private key mode 0640 and group fsGroup, as Trainer mounts it), and the
  launcher gets Trainer's OpenMPI environment.

Then the node pods start (sshd), and the launcher runs the runtime's own
command (docker/trainjob_launcher.sh, horovodrun) with the TrainJob's rank
command: it must train across both pods, evaluate and export.
"""

import copy
import os

from cluster_mpijob import MPI_CONFIG_DIR
from cluster_mpijob import MPIJobRehearsal
from cluster_mpijob import assert_trained
from cluster_mpijob import ssh_logins
from cluster_pod import NETWORK
from cluster_pod import PODMAN
from cluster_pod import PREFIX
from cluster_pod import RUN
from cluster_pod import SUBNET
from cluster_pod import Pod
from cluster_pod import RehearsalError
from cluster_pod import run

LAUNCHER, NODE = "launcher", "node"  # Trainer's replicated job and container names
ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step"


def _merged(rjob, trainer, is_trainer):
  """One replicated job's pod template with the TrainJob's trainer fields, as Trainer merges them."""
  template = copy.deepcopy(rjob["template"]["spec"]["template"])
  for c in template["spec"]["containers"]:
    if c["name"] != NODE:
      continue
    if is_trainer:
      for key in ("image", "command", "args"):
        if key in trainer:
          c[key] = trainer[key]
    if "resourcesPerNode" in trainer:
      for kind, values in trainer["resourcesPerNode"].items():
        c.setdefault("resources", {}).setdefault(kind, {}).update(values)
  return template


class TrainJobRehearsal(MPIJobRehearsal):
  """What Trainer v2 creates for one TrainJob on the runtime, with podman: keys, hostfile, pods.

  Args:
    runtime: the rendered ClusterTrainingRuntime.
    trainjob: the rendered TrainJob that references it.
    image, work, claims: as for `MPIJobRehearsal`.
  """

  def __init__(self, runtime, trainjob, image, work, claims):
    # Not MPIJobRehearsal's __init__: the same attributes, from Trainer's objects.
    self.image, self.work, self.claims = image, work, claims
    if trainjob["spec"]["runtimeRef"]["name"] != runtime["metadata"]["name"]:
      raise RehearsalError("the TrainJob does not reference the runtime")
    policy = runtime["spec"]["mlPolicy"]
    mpi = policy["mpi"]
    if mpi.get("mpiImplementation") != "OpenMPI" or not mpi.get("runLauncherAsNode"):
      raise RehearsalError("only an OpenMPI runtime with runLauncherAsNode is rehearsed")
    trainer = trainjob["spec"]["trainer"]
    self.name = trainjob["metadata"]["name"]
    self.slots = trainer.get("numProcPerNode", mpi.get("numProcPerNode", 1))
    self.ssh_path = mpi["sshAuthMountPath"]
    jobs = {rj["name"]: rj for rj in runtime["spec"]["template"]["spec"]["replicatedJobs"]}
    is_trainer = {
      n: rj["template"].get("metadata", {}).get("labels", {}).get(ANCESTOR) == "trainer"
      for n, rj in jobs.items()
    }
    if not is_trainer[LAUNCHER] or is_trainer[NODE]:
      raise RehearsalError("the launcher job must be the TrainJob's trainer step")
    self.launcher = _merged(jobs[LAUNCHER], trainer, True)
    self.worker = _merged(jobs[NODE], trainer, False)
    self.replicas = trainer.get("numNodes", policy.get("numNodes", 1)) - 1  # the launcher is one
    # Trainer's endpoints (JobSet: <trainjob>-<job>-<replica>-<pod>.<subdomain = trainjob>).
    self.launcher_host = f"{self.name}-{LAUNCHER}-0-0.{self.name}"
    self.hosts = [self.launcher_host] + [
      f"{self.name}-{NODE}-0-{i}.{self.name}" for i in range(self.replicas)
    ]
    net = SUBNET.rsplit(".", 1)[0]
    self.launcher_ip = f"{net}.9"
    self.ips = [f"{net}.{10 + i}" for i in range(self.replicas)]
    self.add_hosts = [
      f"{h}:{ip}" for h, ip in zip(self.hosts, [self.launcher_ip] + self.ips, strict=True)
    ]

  def setup(self):
    """Trainer's Secret (key pair) and ConfigMap (hostfile), as files; Trainer's launcher env."""
    super().setup()  # writes one "host slots=N" line per self.hosts: the launcher, then the nodes
    keys = self.work / "ssh-auth"
    for f in keys.iterdir():
      os.chown(f, 0, 1000)  # fsGroup
      f.chmod(0o640 if f.name == "id_rsa" else 0o644)
    self.operator_env = [
      ("OMPI_MCA_orte_default_hostfile", f"{MPI_CONFIG_DIR}/hostfile"),
      ("OMPI_MCA_orte_keep_fqdn_hostnames", "true"),
      ("OMPI_MCA_orte_set_default_slots", str(self.slots)),
      ("OMPI_MCA_plm_rsh_args", "-o ConnectionAttempts=10"),
    ]

  def start_worker(self, i):
    (c,) = self.worker["spec"]["containers"]
    pod = Pod(self.worker, self.claims, self.extra[:1])  # the hostfile goes to the launcher only
    name = f"{PREFIX}-worker-{i}"
    run(PODMAN + ["rm", "-f", name], check=False)
    run(
      RUN
      + ["-d", "--name", name, "--network", NETWORK, "--ip", self.ips[i]]
      + ["--hostname", f"{self.name}-{NODE}-0-{i}"]
      + [a for h in self.add_hosts for a in ("--add-host", h)]
      + pod.run_args(c, self.image)
    )


def run_trainjob(mpi, model_dir, max_steps):
  """The runtime's launcher command with the TrainJob's rank command, to its end; returns its log."""
  mpi.setup()
  mpi.start_pods()
  code, text = mpi.run_launcher("trainjob")
  if code != 0:
    raise RehearsalError(f"the TrainJob's launcher exited {code}:\n{text[-4000:]}")
  assert_trained(model_dir, max_steps, text, "TrainJob")
  hostfile = (mpi.work / "mpi-config" / "hostfile").read_text()
  if not all(ssh_logins(i) for i in range(mpi.replicas)):
    raise RehearsalError("a node pod ran no rank (no ssh login)")
  return hostfile, text
