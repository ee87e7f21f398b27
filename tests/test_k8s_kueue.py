"""Offline checks of the Kueue manifests: k8s/components/kueue, k8s/overlays/kueue, k8s/kueue/queues.yaml.

Where this sits: tests/test_k8s.py validates every rendered object (the queued
MPIJob included) against the MPI Operator's CRD schema and Pod Security
"restricted". This file checks what Kueue needs of the job and what a
preemption needs of its pods: the queue label, the job created suspended, a
LocalQueue of that name in the example quota whose flavors fit both the CPU
launcher and the GPU workers, and on every training pod the preStop hook and
the grace period that turn a deletion into a checkpoint. `make cluster-test`
runs the suspension itself (scripts/cluster_preempt.py).
"""

from tests.test_k8s import DOCKER
from tests.test_k8s import K8S
from tests.test_k8s import KUEUE_COMPONENT
from tests.test_k8s import _all_rendered
from tests.test_k8s import _by_kind
from tests.test_k8s import _load
from tests.test_k8s import _pods
from tests.test_k8s import _render

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# SIGTERM -> checkpoint on disk -> exit 75 of the largest recipe (mnist_resnet,
# 13M parameters) under horovodrun -np 2 on the busy 2-core machine took at most
# this long, with 100 steps per call (the stop waits for up to two calls;
# docs/cluster.md, "Preemption by Kueue"); the grace period keeps this margin.
MEASURED_STOP_SECONDS = 169
MARGIN = 1.5


def test_the_kueue_overlay_queues_the_base_job_suspended():
  base = _render(K8S / "base" / "kustomization.yaml")
  queued = _render(K8S / "overlays" / "kueue" / "kustomization.yaml")
  (job,) = _by_kind(queued, "MPIJob")
  (plain,) = _by_kind(base, "MPIJob")
  assert job["metadata"]["labels"][QUEUE_LABEL] == "cnn-training"
  assert job["spec"]["runPolicy"]["suspend"] is True
  # Nothing else changes: the same job, the same other objects.
  job["metadata"]["labels"].pop(QUEUE_LABEL)
  job["spec"]["runPolicy"].pop("suspend")
  assert job == plain
  assert [d for d in queued if d["kind"] != "MPIJob"] == [d for d in base if d["kind"] != "MPIJob"]
  # A component, so the other data sets can be queued the same way.
  assert _load(KUEUE_COMPONENT / "kustomization.yaml")[0]["kind"] == "Component"


def test_the_example_queues_admit_the_job():
  docs = {
    d["kind"]: d for d in _load(K8S / "kueue" / "queues.yaml") if d["kind"] != "ResourceFlavor"
  }
  flavors = {
    d["metadata"]["name"]: d
    for d in _load(K8S / "kueue" / "queues.yaml")
    if d["kind"] == "ResourceFlavor"
  }
  assert docs["LocalQueue"]["metadata"]["name"] == "cnn-training"
  assert docs["LocalQueue"]["spec"]["clusterQueue"] == docs["ClusterQueue"]["metadata"]["name"]
  # Not applied by anything: no kustomization lists it.
  listed = {
    (p.parent / r).resolve()
    for p in K8S.rglob("kustomization.yaml")
    for r in _load(p)[0].get("resources", [])
  }
  assert (K8S / "kueue" / "queues.yaml").resolve() not in listed
  (group,) = docs["ClusterQueue"]["spec"]["resourceGroups"]
  quota = {
    f["name"]: {r["name"]: r["nominalQuota"] for r in f["resources"]} for f in group["flavors"]
  }
  assert set(quota) == set(flavors)
  (job,) = _by_kind(_render(K8S / "overlays" / "kueue" / "kustomization.yaml"), "MPIJob")
  for role, spec in job["spec"]["mpiReplicaSpecs"].items():
    (c,) = spec["template"]["spec"]["containers"]
    gpus = int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
    # Kueue takes the first flavor with room; its node labels must not contradict the pod's.
    (flavor,) = [f for f in quota if quota[f].get("nvidia.com/gpu", 0) >= gpus * spec["replicas"]][
      :1
    ]
    labels = flavors[flavor].get("spec", {}).get("nodeLabels", {})
    assert labels == spec["template"]["spec"].get("nodeSelector", {}), (role, flavor)


def test_every_training_pod_checkpoints_within_its_grace_period_on_deletion():
  checked = 0
  for doc in _all_rendered():
    if doc["kind"] not in ("MPIJob", "ClusterTrainingRuntime"):
      continue
    for label, pod in _pods(doc):
      grace = pod["spec"]["terminationGracePeriodSeconds"]
      assert grace >= MEASURED_STOP_SECONDS * MARGIN, label
      (c,) = pod["spec"]["containers"]
      hook = c["lifecycle"]["preStop"]["exec"]["command"]
      assert hook == ["sh", "/workspace/docker/stop_ranks.sh"], label
      assert (DOCKER / "stop_ranks.sh").is_file()
      checked += 1
  # 8 MPIJobs x (launcher, worker) and the runtime's and the rehearsal runtime's 2 each.
  assert checked == 20
