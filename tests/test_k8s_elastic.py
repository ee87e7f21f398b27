"""Offline checks of the elastic training job (k8s/components/elastic, k8s/overlays/elastic).

Where this sits: tests/test_k8s.py holds every manifest to what the programs
accept and what a cluster admits, the elastic ones included; this file adds
what only an elastic job needs: sizes in whole workers, a headless Service that
lists only this job's ready workers, and the discovery script horovodrun runs
(docker/discover_hosts.sh), present in the image and run here for real.
`make cluster-test` runs the job itself (scripts/cluster_elastic.py).
"""

import copy
import os
import pathlib
import subprocess

from tests.test_k8s import BASE
from tests.test_k8s import DOCKER
from tests.test_k8s import DOCKERFILES
from tests.test_k8s import ELASTIC
from tests.test_k8s import K8S
from tests.test_k8s import REHEARSAL_ELASTIC
from tests.test_k8s import ROOT
from tests.test_k8s import _argv
from tests.test_k8s import _by_kind
from tests.test_k8s import _instructions
from tests.test_k8s import _overlay_names
from tests.test_k8s import _rank_command
from tests.test_k8s import _render

DISCOVERY_SCRIPT = DOCKER / "discover_hosts.sh"
# The labels the MPI Operator (v2) puts on a job's worker pods (pkg/controller's defaultLabels).
JOB_NAME_LABEL, JOB_ROLE_LABEL = "training.kubeflow.org/job-name", "training.kubeflow.org/job-role"


def _elastic_jobs():
  """(overlay, its elastic MPIJob, its rendered objects) for each overlay with an elastic job."""
  out = []
  for name in _overlay_names():
    docs = _render(K8S / "overlays" / name / "kustomization.yaml")
    for job in _by_kind(docs, "MPIJob"):
      (launch,) = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
      if "--host-discovery-script" in _argv(launch):
        out.append((name, job, docs))
  return out


def test_elastic_jobs_size_in_whole_workers_and_discover_ready_ones():
  jobs = _elastic_jobs()
  assert [name for name, _, _ in jobs] == [ELASTIC, REHEARSAL_ELASTIC]
  for overlay, job, docs in jobs:
    spec, name = job["spec"], job["metadata"]["name"]
    launcher, worker = spec["mpiReplicaSpecs"]["Launcher"], spec["mpiReplicaSpecs"]["Worker"]
    (launch,) = launcher["template"]["spec"]["containers"]
    argv = _argv(launch)
    own = argv[: argv.index(_rank_command(argv)[0])]
    assert "--hostfile" not in own, f"{overlay}: the discovery script replaces the hostfile"
    slots = spec["slotsPerWorker"]
    np_, min_np, max_np = (int(own[own.index(f) + 1]) for f in ("-np", "--min-np", "--max-np"))
    # In whole workers: start = Worker.replicas, minReplicas, maxReplicas.
    assert np_ == worker["replicas"] * slots, f"{overlay}: -np is the starting workers x slots"
    assert min_np % slots == 0 and max_np % slots == 0, f"{overlay}: sizes in whole workers"
    assert slots <= min_np <= np_ <= max_np, f"{overlay}: {min_np} <= {np_} <= {max_np}"
    # A worker whose ranks failed is blacklisted by IP; its container restarts in
    # the same pod (same IP), so it must be let back after a cooldown.
    assert worker["restartPolicy"] == "OnFailure"
    assert "--blacklist-cooldown-range" in own
    # The script the launcher runs is the repository's, in the image at the
    # Dockerfiles' WORKDIR (their `COPY . .` takes it; no .dockerignore drops it).
    script = pathlib.PurePosixPath(own[own.index("--host-discovery-script") + 1])
    assert script.is_relative_to("/workspace"), script
    source = ROOT / script.relative_to("/workspace")
    assert source == DISCOVERY_SCRIPT and os.access(source, os.X_OK), source
    for dockerfile in DOCKERFILES:
      steps = _instructions(dockerfile)
      assert ("WORKDIR", "/workspace") in steps and ("COPY", ". .") in steps, dockerfile.name
      ignored = (DOCKER / f"{dockerfile.name}.dockerignore").read_text().split()
      assert not {"docker", "docker/discover_hosts.sh", "*.sh"} & set(ignored), dockerfile.name
    # It lists the workers' headless Service: only this job's workers, only ready ones.
    env = {e["name"]: e["value"] for e in launch["env"]}
    assert int(env["SLOTS_PER_WORKER"]) == slots
    (service,) = [
      d for d in _by_kind(docs, "Service") if d["metadata"]["name"] == env["WORKERS_SERVICE"]
    ]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is False
    assert service["spec"]["selector"] == {JOB_NAME_LABEL: name, JOB_ROLE_LABEL: "worker"}
    (work,) = worker["template"]["spec"]["containers"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in [p["name"] for p in work["ports"]]
    # No API access: the pods still mount no service-account token.
    assert launcher["template"]["spec"]["automountServiceAccountToken"] is False


def test_the_elastic_overlay_changes_only_the_training_job_and_adds_its_service():
  base = {(d["kind"], d["metadata"]["name"]): d for d in _render(BASE / "kustomization.yaml")}
  docs = {
    (d["kind"], d["metadata"]["name"]): d
    for d in _render(K8S / "overlays" / ELASTIC / "kustomization.yaml")
  }
  (job,) = [d for d in docs.values() if d["kind"] == "MPIJob"]
  name = job["metadata"]["name"]
  assert set(docs) - set(base) == {("MPIJob", name), ("Service", f"{name}-workers")}
  assert set(base) - set(docs) == {("MPIJob", "train-cifar10")}
  for key in set(base) & set(docs):
    assert docs[key] == base[key], f"changes the base's {key}"
  # The same pods as the base's job; only the launcher's command and environment differ.
  rigid = copy.deepcopy(base[("MPIJob", "train-cifar10")])
  elastic = copy.deepcopy(job)
  for j in (rigid, elastic):
    j["metadata"].pop("name")
    c = j["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    c.pop("command")
    c.pop("env", None)
  assert elastic == rigid


def test_the_discovery_script_prints_one_line_per_address_and_nothing_for_no_workers():
  def discover(service, slots=None):
    env = dict(os.environ, WORKERS_SERVICE=service)
    if slots is not None:
      env["SLOTS_PER_WORKER"] = slots
    return subprocess.run(
      [str(DISCOVERY_SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )

  found = discover("localhost", "2")
  assert (found.returncode, found.stdout) == (0, "127.0.0.1:2\n")
  assert discover("localhost").stdout == "127.0.0.1:1\n"  # one slot unless told
  # No ready worker (the name does not resolve): nothing, and success, so horovodrun waits.
  none = discover("no-such-workers.invalid")
  assert (none.returncode, none.stdout) == (0, "")
  unset = subprocess.run(
    [str(DISCOVERY_SCRIPT)],
    env={"PATH": os.environ["PATH"]},
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )
  assert unset.returncode != 0 and "WORKERS_SERVICE" in unset.stderr
