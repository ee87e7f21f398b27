"""Offline checks of the Kubeflow Trainer v2 manifests: the runtime (k8s/trainer) and the TrainJobs.

Where this sits: tests/test_k8s.py holds every rendered object to the API
schemas (the TrainJob and ClusterTrainingRuntime: Trainer v2.3's own CRD
schemas, vendored in tests/schemas/), every pod of the runtime to Pod Security
"restricted", and every command to the programs' flags. This file checks what
is particular to Trainer v2: that each data set's TrainJob trains what its
MPIJob trains, that the runtime runs the MPIJob's workers and launcher the
Trainer way, and that docker/trainjob_launcher.sh turns the hostfile Trainer
writes into horovodrun's -np and --hostfile, which horovodrun's own parser
reads. `make cluster-test` runs the runtime's launcher command in containers.
"""

import subprocess

from horovod.runner.common.util import hosts as horovod_hosts
import pytest

from tests.test_k8s import DOCKER
from tests.test_k8s import K8S
from tests.test_k8s import TRAINER
from tests.test_k8s import _argv
from tests.test_k8s import _by_kind
from tests.test_k8s import _crd_validator
from tests.test_k8s import _data_set_overlays
from tests.test_k8s import _json_patch
from tests.test_k8s import _rank_command
from tests.test_k8s import _render
from tests.test_k8s import _restricted_violations

LAUNCHER_SCRIPT = DOCKER / "trainjob_launcher.sh"


def _runtime():
  (runtime,) = _by_kind(_render(TRAINER / "kustomization.yaml"), "ClusterTrainingRuntime")
  return runtime


def _replicated_jobs(runtime):
  return {rj["name"]: rj for rj in runtime["spec"]["template"]["spec"]["replicatedJobs"]}


def _hostfile(trainjob, replicated_jobs, slots):
  """The hostfile as Trainer v2.3 writes it (pkg/runtime/framework/plugins/mpi/mpi.go,
  jobset.go's endpoints): "<trainjob>-<replicatedJob>-<replica>-<pod>.<trainjob> slots=N"."""
  return "".join(
    f"{trainjob}-{rjob}-0-{i}.{trainjob} slots={slots}\n"
    for rjob, pods in replicated_jobs
    for i in range(pods)
  )


def test_each_data_set_has_a_trainjob_that_trains_what_its_mpijob_trains():
  runtime = _runtime()
  datasets = _data_set_overlays()
  assert datasets == ["catdog", "cifar10", "mnist"]
  for dataset in datasets:
    mpi_docs = _render(K8S / "overlays" / dataset / "kustomization.yaml")
    tj_docs = _render(K8S / "overlays" / f"trainjob-{dataset}" / "kustomization.yaml")
    (mpijob,) = _by_kind(mpi_docs, "MPIJob")
    (trainjob,) = _by_kind(tj_docs, "TrainJob")
    # The same objects but the MPIJob, which the TrainJob replaces.
    assert [d for d in mpi_docs if d is not mpijob] == [
      d for d in tj_docs if d["kind"] != "TrainJob"
    ]
    assert trainjob["metadata"]["name"] == mpijob["metadata"]["name"] == f"train-{dataset}"
    ref = trainjob["spec"]["runtimeRef"]
    assert ref == {
      "name": runtime["metadata"]["name"],
      "apiGroup": "trainer.kubeflow.org",
      "kind": "ClusterTrainingRuntime",
    }
    trainer, spec = trainjob["spec"]["trainer"], mpijob["spec"]
    (launch,) = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    (work,) = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    argv = _argv(launch)
    # The rank command, every flag; the world size: nodes x GPUs = the MPIJob's -np.
    assert trainer["args"] == _rank_command(argv), dataset
    gpus = int(trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"])
    assert trainer["numNodes"] * gpus == int(argv[argv.index("-np") + 1])
    assert trainer["resourcesPerNode"] == work["resources"]
    assert trainjob["spec"]["activeDeadlineSeconds"] == spec["runPolicy"]["activeDeadlineSeconds"]
    assert not list(_crd_validator("TrainJob").iter_errors(trainjob))


def test_the_runtime_runs_the_mpijobs_pods_the_trainer_way():
  runtime = _runtime()
  (mpijob,) = _by_kind(_render(K8S / "base" / "kustomization.yaml"), "MPIJob")
  mpi = runtime["spec"]["mlPolicy"]["mpi"]
  assert mpi["mpiImplementation"] == mpijob["spec"]["mpiImplementation"] == "OpenMPI"
  assert mpi["sshAuthMountPath"] == mpijob["spec"]["sshAuthMountPath"]
  # The launcher a node: TrainJob's resourcesPerNode reaches every training pod
  # only so (Trainer v2.3 applies it to the launcher, and to the nodes with it).
  assert mpi["runLauncherAsNode"] is True
  jobs = _replicated_jobs(runtime)
  assert set(jobs) == {"node", "launcher"}
  assert jobs["launcher"]["template"]["metadata"]["labels"] == {
    "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"
  }
  assert jobs["launcher"]["dependsOn"] == [{"name": "node", "status": "Ready"}]
  mpi_pods = {role: rs["template"] for role, rs in mpijob["spec"]["mpiReplicaSpecs"].items()}
  (worker,) = mpi_pods["Worker"]["spec"]["containers"]
  (mpi_launcher,) = mpi_pods["Launcher"]["spec"]["containers"]
  for name, rj in jobs.items():
    pod = rj["template"]["spec"]["template"]
    assert not _restricted_violations(pod), (name, _restricted_violations(pod))
    (c,) = pod["spec"]["containers"]
    assert c["name"] == "node"  # the container Trainer fills from the TrainJob
    # Checkpoint on deletion: the MPIJob's hook and grace period.
    assert c["lifecycle"] == worker["lifecycle"] == mpi_launcher["lifecycle"]
    assert (
      pod["spec"]["terminationGracePeriodSeconds"]
      == mpi_pods["Worker"]["spec"]["terminationGracePeriodSeconds"]
    )
    assert pod["spec"]["securityContext"] == mpi_pods["Worker"]["spec"]["securityContext"]
  (node,) = jobs["node"]["template"]["spec"]["template"]["spec"]["containers"]
  for key in ("command", "ports", "readinessProbe", "resources", "volumeMounts"):
    assert node[key] == worker[key], key
  (launcher,) = jobs["launcher"]["template"]["spec"]["template"]["spec"]["containers"]
  argv = _argv(launcher)
  assert argv[0] == f"/workspace/docker/{LAUNCHER_SCRIPT.name}" and argv[1] == "horovodrun"
  assert LAUNCHER_SCRIPT.stat().st_mode & 0o111, "the image runs it directly"
  # The script adds -np and --hostfile; the rest are the MPIJob launcher's own flags
  # (tests/test_k8s.py holds those to horovodrun's --help).
  mpi_argv = _argv(mpi_launcher)
  mpi_own = mpi_argv[: mpi_argv.index(_rank_command(mpi_argv)[0])]
  assert "-np" not in argv and "--hostfile" not in argv
  assert {t for t in argv[2:] if t.startswith("--")} == {
    t for t in mpi_own if t.startswith("--") and t != "--hostfile"
  }
  # Rank 0 writes checkpoints and summaries: the launcher (rank 0 runs there)
  # and the nodes mount the data read-only and the runs volume read-write.
  assert launcher["volumeMounts"] == node["volumeMounts"]
  # Preemption that is not a suspend: exit 75 restarts the job without spending a restart.
  launcher_job = jobs["launcher"]["template"]["spec"]
  assert {
    "action": "FailJob",
    "onExitCodes": {"containerName": "node", "operator": "In", "values": [75]},
  } in (launcher_job["podFailurePolicy"]["rules"])
  (rule,) = runtime["spec"]["template"]["spec"]["failurePolicy"]["rules"]
  assert rule["action"] == "RestartJobSetAndIgnoreMaxRestarts"
  assert rule["onJobFailureReasons"] == ["PodFailurePolicy"]


def test_the_trainer_crd_schemas_refuse_what_trainer_refuses():
  (trainjob,) = _by_kind(
    _render(K8S / "overlays" / "trainjob-cifar10" / "kustomization.yaml"), "TrainJob"
  )
  runtime = _runtime()
  assert not list(_crd_validator("TrainJob").iter_errors(trainjob))
  assert not list(_crd_validator("ClusterTrainingRuntime").iter_errors(runtime))
  for kind, doc, path, value in [
    ("TrainJob", trainjob, "/spec/trainer/numNode", 2),
    ("TrainJob", trainjob, "/spec/trainer/numNodes", "2"),
    ("ClusterTrainingRuntime", runtime, "/spec/mlPolicy/mpi/mpiImplementation", "Horovod"),
    ("ClusterTrainingRuntime", runtime, "/spec/mlPolicy/mpi/elasticPolicy", {}),
  ]:
    broken = _json_patch(doc, [{"op": "add", "path": path, "value": value}])
    assert list(_crd_validator(kind).iter_errors(broken)), f"schema accepts {path}={value!r}"


def _launch(tmp_path, hostfile_text, program, *args):
  hostfile = tmp_path / "hostfile"
  hostfile.write_text(hostfile_text)
  return subprocess.run(
    ["sh", str(LAUNCHER_SCRIPT), str(program), *args],
    env={"PATH": "/usr/bin:/bin", "HOSTFILE": str(hostfile)},
    capture_output=True,
    text=True,
    timeout=30,
    check=False,
  )


def test_the_launcher_turns_trainers_hostfile_into_horovodrun_flags(tmp_path):
  """-np is the hostfile's slots; horovodrun's own parser reads Trainer's hostfile."""
  text = _hostfile("train-mnist", [("launcher", 1), ("node", 3)], slots=2)
  result = _launch(tmp_path, text, "echo", "--gloo", "python", "trainers/mnist.py")
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == [
    "-np",
    "8",
    "--hostfile",
    str(tmp_path / "hostfile"),
    "--gloo",
    "python",
    "trainers/mnist.py",
  ]
  assert horovod_hosts.parse_host_files(str(tmp_path / "hostfile")) == (
    "train-mnist-launcher-0-0.train-mnist:2,train-mnist-node-0-0.train-mnist:2,"
    "train-mnist-node-0-1.train-mnist:2,train-mnist-node-0-2.train-mnist:2"
  )
  empty = _launch(tmp_path, "", "echo", "python")
  assert empty.returncode == 1 and "has no '<host> slots=N' line" in empty.stderr


@pytest.mark.parametrize(("first_rank_exit", "want"), [(75, 75), (1, 1), (0, 0)])
def test_the_launcher_exits_75_when_the_ranks_were_preempted(tmp_path, first_rank_exit, want):
  """horovodrun exits 1 whatever its ranks did; the launcher passes a preemption's 75 on."""
  fake = tmp_path / "horovodrun"
  message = (
    f"RuntimeError: Horovod detected that one or more processes exited with non-zero status\n"
    f"Process name: 0\nExit code: {first_rank_exit}\n"
  )
  fake.write_text(
    "#!/bin/sh\n" + (f"printf '{message}'\nexit 1\n" if first_rank_exit else "exit 0\n")
  )
  fake.chmod(0o755)
  result = _launch(tmp_path, _hostfile("t", [("launcher", 1)], 1), fake, "python")
  assert result.returncode == want, result.stdout + result.stderr
