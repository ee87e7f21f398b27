"""Offline checks of the cluster side: the Kubernetes manifests (k8s/) and the images (docker/).

Where this sits: the manifests run the repository's own programs (the Beam job,
the trainers under horovodrun, TensorBoard) in images built by docker/, so a
renamed flag or module breaks them only once they reach a cluster. Nothing here
needs a cluster, a registry or Docker: the tests read the YAML and Dockerfiles and
hold them to what the code really accepts and to what a cluster admits. Every
command they run must exist; every flag must be in the program's --help (for the
Beam job: or be a Beam pipeline option), and the Beam job's own parser must
accept its command lines; the MPIJob's -np must equal workers x slots; volumes,
claims, labels, ports and images must agree. Every rendered object must pass the
Kubernetes API schemas in strict mode (kubernetes-validate; the MPIJob: the
mpi-operator's own CRD schema, vendored in tests/schemas/), and every pod the
Pod Security "restricted" profile. The overlays are rendered with their own JSON
patches here, and, when kubectl is on the PATH, also built with `kubectl
kustomize` under its default load restrictions. Running the commands for real,
in containers, is `make cluster-test` (scripts/cluster_test.py).
"""

import copy
import functools
import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from trainers import recipes

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
BASE = K8S / "base"
SCHEMAS = ROOT / "tests" / "schemas"
# The Kubernetes releases k8s/README.md promises (podFailurePolicy needs 1.29).
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
# The overlays `make cluster-test` runs; they swap in the CPU image and drop the GPUs.
REHEARSAL = "rehearsal"
REHEARSAL_ELASTIC = "rehearsal-elastic"
# The elastic job (k8s/components/elastic) and the overlay that applies it to the base.
ELASTIC = "elastic"
ELASTIC_COMPONENT = K8S / "components" / "elastic"
# Kueue (k8s/components/kueue, k8s/overlays/kueue) and Kubeflow Trainer v2 (the
# runtime in k8s/trainer, a TrainJob per data set in k8s/overlays/trainjob-*):
# tests/test_k8s_kueue.py and tests/test_k8s_trainer.py.
KUEUE = "kueue"
KUEUE_COMPONENT = K8S / "components" / "kueue"
TRAINER = K8S / "trainer"
REHEARSAL_TRAINJOB = "rehearsal-trainjob"
# The custom resources' own schemas (tests/schemas/README.md says where each is from).
CRD_SCHEMAS = {
  "MPIJob": "mpi-operator-v2beta1-mpijob.json",
  "TrainJob": "trainer-v1alpha1-trainjob.json",
  "ClusterTrainingRuntime": "trainer-v1alpha1-clustertrainingruntime.json",
}
GPU_NODE_LABEL = "nvidia.com/gpu.present"
DOCKER = ROOT / "docker"
BIN = pathlib.Path(sys.executable).parent
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile*") if p.suffix != ".dockerignore")
SSH_SETUP = DOCKER / "configure_ssh.sh"
IMAGE = "cnn-pipeline"  # the name every container uses; kustomization.yaml maps it
DATA_CLAIM, RUNS_CLAIM = "cnn-data", "cnn-runs"
BUILD_TFRECORDS = "pipeline.build_tfrecords"
# MPIJob kubeflow.org/v2beta1 fields (mpi-operator pkg/apis/kubeflow/v2beta1/types.go).
MPIJOB_SPEC_FIELDS = {
  "slotsPerWorker",
  "runLauncherAsWorker",
  "runPolicy",
  "mpiReplicaSpecs",
  "sshAuthMountPath",
  "launcherCreationPolicy",
  "mpiImplementation",
}
MPIJOB_RUN_POLICY_FIELDS = {
  "cleanPodPolicy",
  "ttlSecondsAfterFinished",
  "activeDeadlineSeconds",
  "backoffLimit",
  "schedulingPolicy",
  "suspend",
  "managedBy",
}
MPIJOB_REPLICA_FIELDS = {"replicas", "template", "restartPolicy"}


# ---- loading the manifests ---------------------------------------------------


def _load(path):
  return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _manifest_files():
  return sorted(p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")


def _kustomizations():
  """k8s/base and the overlays: what `kubectl kustomize` builds (a Component is part of one)."""
  return sorted(
    p for p in K8S.rglob("kustomization.yaml") if _load(p)[0]["kind"] == "Kustomization"
  )


def _components():
  return sorted(p for p in K8S.rglob("kustomization.yaml") if _load(p)[0]["kind"] == "Component")


def _base_docs():
  return [doc for path in _manifest_files() for doc in _load(path)]


def _json_patch(doc, ops):
  """Applies RFC 6902 add/replace/remove operations, as kustomize's `patches` does."""
  doc = copy.deepcopy(doc)
  for op in ops:
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node = doc
    for part in parents:
      node = node[int(part)] if isinstance(node, list) else node[part]
    key = int(last) if isinstance(node, list) else last
    if op["op"] == "replace":
      node[key]  # must exist, as in RFC 6902
      node[key] = copy.deepcopy(op["value"])
    elif op["op"] == "add":
      if isinstance(node, list):
        node.insert(key, copy.deepcopy(op["value"]))
      else:
        node[key] = copy.deepcopy(op["value"])
    elif op["op"] == "remove":
      del node[key]
    else:
      raise ValueError(f"unsupported JSON patch op {op['op']!r}")
  return doc


def _matches(doc, target):
  group = doc["apiVersion"].rpartition("/")[0]
  return all(
    [
      target.get("kind", doc["kind"]) == doc["kind"],
      target.get("name", doc["metadata"]["name"]) == doc["metadata"]["name"],
      target.get("group", group) == group,
    ]
  )


def _render(kustomization):
  """The documents a kustomization produces, before its label and image transformers.

  As kustomize orders them: its resources, then each component's resources and
  patches, then its own patches.
  """
  spec = _load(kustomization)[0]
  docs = []
  for resource in spec["resources"]:
    path = (kustomization.parent / resource).resolve()
    docs += _render(path / "kustomization.yaml") if path.is_dir() else _load(path)
  for component in spec.get("components", []):
    path = (kustomization.parent / component).resolve() / "kustomization.yaml"
    docs += [d for r in _load(path)[0].get("resources", []) for d in _load(path.parent / r)]
    docs = _patched(docs, _load(path)[0], path)
  return _patched(docs, spec, kustomization)


def _patched(docs, spec, kustomization):
  """`docs` with the JSON patches of a kustomization (or component) `spec` applied."""
  docs = list(docs)
  for patch in spec.get("patches", []):
    ops = yaml.safe_load(patch["patch"])
    hits = [i for i, d in enumerate(docs) if _matches(d, patch["target"])]
    assert hits, f"{kustomization}: patch target {patch['target']} matches nothing"
    if isinstance(ops, dict):  # a strategic merge patch; only `$patch: delete` is used
      assert ops.get("$patch") == "delete", f"{kustomization}: unsupported patch {ops}"
      docs = [d for i, d in enumerate(docs) if i not in hits]
      continue
    for i in hits:
      docs[i] = _json_patch(docs[i], ops)
  return docs


@functools.cache
def _all_rendered():
  """Every distinct object any kustomization creates (an overlay's copy of a base object once)."""
  seen = {}
  for k in _kustomizations():
    for doc in _render(k):
      seen.setdefault(json.dumps(doc, sort_keys=True), doc)
  return list(seen.values())


def _by_kind(docs, kind):
  return [d for d in docs if d["kind"] == kind]


def _pods(doc):
  """(label, pod template) pairs of a workload object."""
  if doc["kind"] in ("Job", "Deployment"):
    return [(doc["metadata"]["name"], doc["spec"]["template"])]
  if doc["kind"] == "MPIJob":
    return [
      (f"{doc['metadata']['name']}/{role}", rs["template"])
      for role, rs in doc["spec"]["mpiReplicaSpecs"].items()
    ]
  if doc["kind"] == "ClusterTrainingRuntime":  # a JobSet template: Jobs of pods
    return [
      (f"{doc['metadata']['name']}/{rj['name']}", rj["template"]["spec"]["template"])
      for rj in doc["spec"]["template"]["spec"]["replicatedJobs"]
    ]
  return []


def _containers(pod):
  spec = pod["spec"]
  return spec.get("initContainers", []) + spec["containers"]


def _argv(container):
  return [str(a) for a in container.get("command", []) + container.get("args", [])]


def _all_containers():
  return [
    (f"{label}/{c['name']}", pod, c)
    for doc in _all_rendered()
    for label, pod in _pods(doc)
    for c in _containers(pod)
  ]


# ---- commands ------------------------------------------------------------------


def _comment_commands(text):
  """Example command lines in '#' comments ('#   python ...', '\\' continues a line)."""
  commands, pending = [], ""
  for line in text.splitlines():
    stripped = line.strip()
    if not stripped.startswith("#"):
      pending = ""
      continue
    body = stripped.lstrip("#").strip()
    if pending or body.startswith("python "):
      pending += body
      if pending.endswith("\\"):
        pending = pending[:-1] + " "
      else:
        commands.append(shlex.split(pending))
        pending = ""
  return commands


def _rank_command(argv):
  """The program horovodrun starts: everything from the first python/script token."""
  for i, token in enumerate(argv[1:], 1):
    if token in ("python", "python3") or token.endswith(".py"):
      return argv[i:]
  raise AssertionError(f"no rank command in {argv}")


def _program(argv):
  """What an argv runs, as (kind, name, flag tokens), or None for a shell one-liner."""
  if argv[0] in ("python", "python3"):
    if argv[1] == "-m":
      return ("module", argv[2], argv[3:])
    return ("script", argv[1], argv[2:])
  if argv[0].endswith(".py"):
    return ("script", argv[0], argv[1:])
  if argv[0] in ("sh", "bash") and argv[1] == "-c":
    return None
  return ("bin", argv[0], argv[1:])


def _all_commands():
  """(where, program) for every command the manifests and Dockerfile comments run."""
  found = []
  for where, _, c in _all_containers():
    argv = _argv(c)
    if argv[0] == "horovodrun":  # its own flags, then the program it starts on every rank
      rank = _rank_command(argv)
      found.append((where, _program(argv[: len(argv) - len(rank)])))
      found.append((where + " (ranks)", _program(rank)))
    elif _program(argv) is not None:
      found.append((where, _program(argv)))
  for path in _manifest_files() + DOCKERFILES:
    for argv in _comment_commands(path.read_text()):
      found.append((f"{path.name} comment", _program(argv)))
  return found


# Runs in one subprocess, so that TensorFlow is imported once: every program's
# --help (in-process, with runpy), then Beam's option names and the Beam job's
# own parser on each of its command lines. JSON in, JSON out (last line).
_PROBE = r"""
import contextlib, io, json, runpy, sys
request = json.load(sys.stdin)
helps = {}
for kind, name, path in request["programs"]:
  out, code = io.StringIO(), "no exit"
  sys.argv = [name, "--help"]
  with contextlib.redirect_stdout(out):
    try:
      if kind == "module":
        runpy.run_module(name, run_name="__main__", alter_sys=True)
      else:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
      code = e.code
  helps[kind + ":" + name] = {"code": code, "text": out.getvalue()}
from apache_beam.options.pipeline_options import PipelineOptions
from pipeline import build_tfrecords
errors = []
for argv in request["beam_argvs"]:
  with contextlib.redirect_stderr(io.StringIO()) as err:
    try:
      build_tfrecords.parse_args(argv)
      errors.append(None)
    except SystemExit:
      errors.append(err.getvalue() or "rejected")
print(json.dumps({"helps": helps, "errors": errors,
                  "beam_options": sorted(PipelineOptions([]).get_all_options(drop_default=False))}))
"""


@pytest.fixture(scope="module")
def probe():
  """--help of every repository program and venv tool the manifests run, and the Beam checks.

  Returns:
    A dict: `helps` maps (kind, name) to the --help text; `beam_options` is the
    set of Beam pipeline option names; `beam_argvs` the Beam job's command lines
    and `beam_errors` its parser's verdict on each (None: accepted).
  """
  commands = _all_commands()
  programs = sorted(
    {
      (kind, name)
      for _, (kind, name, _) in commands
      if kind != "bin" or (not name.startswith("/") and (BIN / name).exists())
    }
  )
  paths = {
    "module": lambda n: None,
    "script": lambda n: str(ROOT / n),
    "bin": lambda n: str(BIN / n),
  }
  beam_argvs = [
    flags for _, (kind, name, flags) in commands if (kind, name) == ("module", BUILD_TFRECORDS)
  ]
  request = {
    "programs": [(kind, name, paths[kind](name)) for kind, name in programs],
    "beam_argvs": beam_argvs,
  }
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
    [sys.executable, "-c", _PROBE],
    cwd=ROOT,
    env=env,
    input=json.dumps(request),
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.splitlines()[-1])
  helps = {}
  for kind, name in programs:
    entry = out["helps"][f"{kind}:{name}"]
    assert entry["code"] in (0, None) and "--help" in entry["text"], (
      f"{name} --help failed (exit {entry['code']}):\n{result.stderr[-2000:]}"
    )
    helps[(kind, name)] = entry["text"]
  return {
    "helps": helps,
    "beam_options": set(out["beam_options"]),
    "beam_argvs": beam_argvs,
    "beam_errors": out["errors"],
  }


def _long_flags(help_text):
  return set(re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", help_text))


def _choices(help_text):
  return {
    flag: set(values.split(","))
    for flag, values in re.findall(r"(--[\w-]+) \{([^}]+)\}", help_text)
  }


def _flag_values(tokens):
  """(flag, value or None) for each long flag in `tokens`."""
  out = []
  for i, token in enumerate(tokens):
    if token.startswith("--"):
      flag, eq, value = token.partition("=")
      if not eq:
        value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("-") else None
      out.append((flag, value))
  return out


# ---- quantities ----------------------------------------------------------------

_UNITS = {
  "m": 1e-3,
  "k": 1e3,
  "M": 1e6,
  "G": 1e9,
  "T": 1e12,
  "Ki": 2**10,
  "Mi": 2**20,
  "Gi": 2**30,
  "Ti": 2**40,
}


def _quantity(value):
  number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
  return float(number) * _UNITS.get(unit, 1)


# ---- the manifests -------------------------------------------------------------


def test_every_document_parses_and_names_itself():
  paths = sorted(K8S.rglob("*.yaml"))
  assert len(paths) >= 9
  for path in paths:
    docs = _load(path)
    assert docs, f"{path}: no YAML document"
    for doc in docs:
      assert doc.get("apiVersion") and doc.get("kind"), f"{path}: document without apiVersion/kind"
      if doc["kind"] in ("Kustomization", "Component"):
        assert "namespace" not in doc, f"{path}: the manifests are namespace-agnostic"
        continue
      assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without metadata.name"
      assert "namespace" not in doc["metadata"], f"{path}: hard-coded namespace"


def test_kustomization_lists_exactly_the_manifests():
  base = _load(BASE / "kustomization.yaml")[0]
  assert sorted(base["resources"]) == sorted(p.name for p in _manifest_files())
  assert sorted(p.relative_to(K8S).as_posix() for p in _kustomizations()) == sorted(
    ["base/kustomization.yaml", "trainer/kustomization.yaml"]
    + [f"overlays/{d}/kustomization.yaml" for d in _overlay_names()]
    + [f"jobs/{d}/kustomization.yaml" for d in _job_names()]
  )
  for path in _kustomizations() + _components():
    for resource in _load(path)[0].get("resources", []):
      assert (path.parent / resource).exists(), f"{path}: missing resource {resource}"
  # `kubectl apply -k` (and Argo CD, Flux) load nothing outside an overlay's
  # directory except through a base or a component: an overlay's resources are
  # k8s/base or an overlay it refines, its components are under k8s/components.
  for name in _overlay_names():
    spec = _load(K8S / "overlays" / name / "kustomization.yaml")[0]
    for resource in spec["resources"]:
      # Besides: a TrainJob of the overlay's own, and the Trainer runtime (rehearsal).
      assert resource in ("../../base", "../../trainer", "trainjob.yaml") or re.fullmatch(
        r"\.\./[\w-]+", resource
      ), (name, resource)
    for component in spec.get("components", []):
      assert re.fullmatch(r"\.\./\.\./components/[\w-]+", component), (name, component)
  assert [p.parent for p in _components()] == [ELASTIC_COMPONENT, KUEUE_COMPONENT]
  # An overlay's and a component's YAML is all in their resources; any other
  # YAML there would be applied by nobody.
  for path in (K8S / "overlays").glob("*/kustomization.yaml"):
    listed = {(path.parent / r).resolve() for r in _load(path)[0]["resources"]}
    assert set(path.parent.glob("*.yaml")) - {path} <= listed, path
  # So are a one-off job's (k8s/jobs/*: applied on its own, without the base).
  for path in _components() + [K8S / "jobs" / n / "kustomization.yaml" for n in _job_names()]:
    listed = {(path.parent / r).resolve() for r in _load(path)[0].get("resources", [])}
    assert set(path.parent.glob("*.yaml")) - {path} == listed, path


def _overlay_names():
  return sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def _job_names():
  """The one-off jobs of k8s/jobs/, each a kustomization applied on its own (without the base)."""
  return sorted(p.parent.name for p in (K8S / "jobs").glob("*/kustomization.yaml"))


def _data_set_overlays():
  """The overlays that train one data set the base's way (not elastic, not rehearsals)."""
  return [
    n
    for n in _overlay_names()
    if n not in (ELASTIC, KUEUE) and not n.startswith(("rehearsal", "trainjob-"))
  ]


def test_only_the_base_names_the_image_and_labels():
  base = _load(BASE / "kustomization.yaml")[0]
  assert [i["name"] for i in base["images"]] == [IMAGE]
  assert base["labels"]
  for path in [
    K8S / "overlays" / n / "kustomization.yaml" for n in _overlay_names()
  ] + _components():
    name, spec = path.parent.name, _load(path)[0]
    assert "labels" not in spec and "commonLabels" not in spec, f"{name}: labels belong to the base"
    if name in (REHEARSAL, REHEARSAL_TRAINJOB):  # the CPU image the rehearsal builds
      (image,) = spec["images"]
      assert image["name"] == base["images"][0]["newName"] and image["newTag"].endswith("-cpu")
    else:
      assert "images" not in spec, f"{name}: the image is set in k8s/base only"
  # A one-off job is applied without the base, so it carries copies of the
  # base's image and labels, held equal here.
  for name in _job_names():
    spec = _load(K8S / "jobs" / name / "kustomization.yaml")[0]
    assert spec["images"] == base["images"] and spec["labels"] == base["labels"], name


def test_data_set_overlays_change_only_names_and_data_set():
  base = {(d["kind"], d["metadata"]["name"]): d for d in _render(BASE / "kustomization.yaml")}
  assert {kind for kind, _ in base} == {
    "PersistentVolumeClaim",
    "Job",
    "MPIJob",
    "Deployment",
    "Service",
  }
  datasets = _data_set_overlays()
  assert datasets == ["catdog", "cifar10", "mnist"]
  for dataset in datasets:
    docs = {
      (d["kind"], d["metadata"]["name"]): d
      for d in _render(K8S / "overlays" / dataset / "kustomization.yaml")
    }
    own = {("MPIJob", f"train-{dataset}"), ("Job", f"eval-{dataset}")}
    assert own <= set(docs), f"{dataset}: no train-{dataset}/eval-{dataset}"
    # Everything else is the base's own object, unchanged, so overlays applied
    # side by side share the volumes, the Beam job and TensorBoard.
    shared = set(base) - {("MPIJob", "train-cifar10"), ("Job", "eval-cifar10")}
    assert set(docs) - own == shared
    for key in shared:
      assert docs[key] == base[key], f"{dataset}: changes the shared {key}"
    if dataset != "cifar10":
      text = json.dumps([docs[key] for key in own])
      assert "cifar10" not in text, f"{dataset}: leaves a cifar10 path or script in place"


def test_containers_have_requests_limits_and_the_same_image():
  containers = _all_containers()
  assert len(containers) >= 8
  for where, _, c in containers:
    assert c["image"] == IMAGE, f"{where}: image {c['image']!r}"
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    for resource in ("cpu", "memory"):
      assert resource in requests and resource in limits, f"{where}: no {resource} request/limit"
      assert _quantity(requests[resource]) <= _quantity(limits[resource]), f"{where}: {resource}"
    for resource in set(requests) | set(limits):
      if "/" in resource:  # extended resources (GPUs) cannot be overcommitted
        assert requests.get(resource) == limits.get(resource), f"{where}: {resource}"


def test_every_command_exists():
  commands = _all_commands()
  modules = {name for _, (kind, name, _) in commands if kind == "module"}
  scripts = {name for _, (kind, name, _) in commands if kind == "script"}
  assert {BUILD_TFRECORDS, "preprocess.download"} <= modules
  assert {"trainers/cifar10.py", "trainers/mnist.py", "trainers/catdog.py"} <= scripts
  for where, (kind, name, _) in commands:
    if kind == "module":
      path = ROOT / name.replace(".", "/")
      assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), (
        f"{where}: {name}"
      )
    elif kind == "script":
      assert (ROOT / name).is_file(), f"{where}: {name} is not in the repository"
    else:  # a tool from the venv (horovodrun, tensorboard) or the image's system
      assert (BIN / name).exists() or name.startswith("/"), f"{where}: unknown program {name}"
  for dockerfile in DOCKERFILES:
    for word, rest in _instructions(dockerfile):
      for module in re.findall(
        r"\bpython[\d.]* -m ([\w.]+)", rest if word in ("RUN", "CMD", "ENTRYPOINT") else ""
      ):
        in_repo = (ROOT / module.replace(".", "/")).with_suffix(".py").is_file()
        assert in_repo or importlib.util.find_spec(module), f"{dockerfile.name}: no module {module}"


def test_every_flag_is_accepted(probe):
  checked = 0
  for where, (kind, name, tokens) in _all_commands():
    if (kind, name) not in probe["helps"]:
      continue
    text = probe["helps"][(kind, name)]
    known, choices = _long_flags(text), _choices(text)
    for flag, value in _flag_values(tokens):
      checked += 1
      ok = flag in known or (name == BUILD_TFRECORDS and flag[2:] in probe["beam_options"])
      assert ok, f"{where}: {name} has no flag {flag}"
      if flag in choices:
        assert value in choices[flag], f"{where}: {flag} {value!r} not in {sorted(choices[flag])}"
  assert checked >= 30


def test_beam_job_command_lines_parse_with_its_own_parser(probe):
  assert len(probe["beam_argvs"]) >= 3  # the Job, and the Dataflow and Flink examples
  for argv, error in zip(probe["beam_argvs"], probe["beam_errors"]):
    assert error is None, f"python -m {BUILD_TFRECORDS} rejects {argv}:\n{error}"


def test_beam_workers_match_the_cpu_request():
  (job,) = [
    d
    for d in _base_docs()
    if d["kind"] == "Job"
    and any(BUILD_TFRECORDS in _argv(c) for c in _containers(d["spec"]["template"]))
  ]
  (c,) = [c for c in _containers(job["spec"]["template"]) if BUILD_TFRECORDS in _argv(c)]
  flags = dict(_flag_values(_argv(c)))
  assert flags["--direct_running_mode"] == "multi_processing"
  assert float(flags["--direct_num_workers"]) == _quantity(c["resources"]["requests"]["cpu"])
  assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
  assert isinstance(job["spec"]["backoffLimit"], int)


def test_mpijob_world_size_matches_workers_and_gpus(probe):
  mpijobs = _by_kind(_all_rendered(), "MPIJob")
  # cifar10, the mnist and catdog overlays, elastic, kueue, and the three rehearsals
  assert len(mpijobs) == 8
  for job in mpijobs:
    name, spec = job["metadata"]["name"], job["spec"]
    assert job["apiVersion"] == "kubeflow.org/v2beta1"
    assert set(spec) <= MPIJOB_SPEC_FIELDS, (
      f"{name}: unknown fields {set(spec) - MPIJOB_SPEC_FIELDS}"
    )
    assert set(spec["runPolicy"]) <= MPIJOB_RUN_POLICY_FIELDS
    launcher, worker = spec["mpiReplicaSpecs"]["Launcher"], spec["mpiReplicaSpecs"]["Worker"]
    assert set(launcher) <= MPIJOB_REPLICA_FIELDS and set(worker) <= MPIJOB_REPLICA_FIELDS
    # A failed rank must end the job: bounded retries, and the workers released.
    assert spec["runPolicy"]["cleanPodPolicy"] in ("Running", "All")
    assert (
      isinstance(spec["runPolicy"]["backoffLimit"], int) and spec["runPolicy"]["backoffLimit"] >= 0
    )
    assert launcher["replicas"] == 1

    (launch,) = launcher["template"]["spec"]["containers"]
    argv = _argv(launch)
    assert argv[0] == "horovodrun", f"{name}: launcher runs {argv[0]}"
    own = argv[: argv.index(_rank_command(argv)[0])]
    if "--host-discovery-script" not in own:  # elastic ones: tests/test_k8s_elastic.py
      assert own[own.index("--hostfile") + 1] == "/etc/mpi/hostfile"
    horovodrun_flags = _long_flags(probe["helps"][("bin", "horovodrun")]) | {"-np"}
    assert {t for t in own if t.startswith("-")} <= horovodrun_flags
    gpus = int(
      worker["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)
    )
    assert spec["slotsPerWorker"] == gpus or not gpus, f"{name}: one slot per GPU"
    assert int(own[own.index("-np") + 1]) == worker["replicas"] * spec["slotsPerWorker"], (
      f"{name}: -np must be Worker.replicas x slotsPerWorker"
    )

    # Workers run sshd for horovodrun as the image's user, on the unprivileged
    # port its config names, and are ready only once it listens; horovodrun
    # connects there; the operator mounts the keys in that user's home and
    # writes the hostfile in the format horovodrun parses ("host slots=N").
    (work,) = worker["template"]["spec"]["containers"]
    argv = _argv(work)
    assert " ".join(argv).startswith("/usr/sbin/sshd -D")
    sshd_config = argv[argv.index("-f") + 1]
    assert sshd_config == "/etc/ssh/sshd_config_mpi"
    image_sshd = re.search(
      r"cat > /etc/ssh/sshd_config_mpi <<'CONF'\n(.*?)\nCONF", SSH_SETUP.read_text(), re.S
    )
    config = dict(line.split(None, 1) for line in image_sshd.group(1).splitlines())
    ssh_port = {p["name"]: p["containerPort"] for p in work["ports"]}["ssh"]
    assert ssh_port == int(config["Port"]) == int(own[own.index("--ssh-port") + 1]) == 2222
    assert work["readinessProbe"]["tcpSocket"]["port"] in ("ssh", ssh_port)
    assert spec["sshAuthMountPath"] == "/home/mpiuser/.ssh"
    assert config["HostKey"] == spec["sshAuthMountPath"] + "/id_rsa"  # the operator's file name
    assert config["AuthorizedKeysFile"] == spec["sshAuthMountPath"] + "/authorized_keys"
    assert spec["mpiImplementation"] == "OpenMPI"
    assert spec["launcherCreationPolicy"] == "WaitForWorkersReady"
    # A job that cannot be scheduled, or whose data never comes, ends.
    assert spec["runPolicy"]["activeDeadlineSeconds"] > 0


def test_overlays_train_the_recipes_own_number_of_examples():
  """Each data set's training job sees the recipe's examples (steps x global batch), not -np times.

  A recipe's step budget is for one worker; with -np ranks of the same
  per-rank batch, the job must run 1/np of its steps (or the same --epochs).
  """
  for overlay in _data_set_overlays() + [ELASTIC]:  # elastic: at its starting size
    docs = _render(K8S / "overlays" / overlay / "kustomization.yaml")
    (job,) = _by_kind(docs, "MPIJob")
    (launch,) = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    argv = _argv(launch)
    np_ = int(argv[argv.index("-np") + 1])
    dataset = pathlib.Path(_rank_command(argv)[1]).stem
    assert job["metadata"]["name"].startswith(f"train-{dataset}"), overlay
    flags = dict(_flag_values(_rank_command(argv)))
    recipe = recipes.get(flags.get("--recipe", recipes.default_for(dataset)))
    assert "--epochs" not in flags, f"{dataset}: the check below counts steps"
    batch = int(flags.get("--batch-size", recipe.batch_size))
    steps = int(flags.get("--max-steps", recipe.max_steps))
    assert steps * batch * np_ == recipe.max_steps * recipe.batch_size, (
      f"{dataset}: {steps} steps x {batch} x {np_} ranks, but recipe {recipe.name} trains "
      f"{recipe.max_steps} x {recipe.batch_size} examples"
    )


def _mounts(pod, container):
  """mountPath -> (claim, readOnly) for the PVC mounts of `container`."""
  volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
  out = {}
  for m in container.get("volumeMounts", []):
    claim = volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName")
    if claim:
      out[m["mountPath"]] = (claim, bool(m.get("readOnly")))
  return out


def _claim_at(mounts, path):
  hits = [
    (mp, v) for mp, v in mounts.items() if path == mp or path.startswith(mp.rstrip("/") + "/")
  ]
  assert hits, f"{path} is on no mounted volume"
  return max(hits, key=lambda h: len(h[0]))[1]


def test_volume_mounts_match_claims():
  claims = {d["metadata"]["name"]: d for d in _base_docs() if d["kind"] == "PersistentVolumeClaim"}
  assert set(claims) == {DATA_CLAIM, RUNS_CLAIM}
  for claim in claims.values():
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on several nodes
  for label, pod in [p for d in _all_rendered() for p in _pods(d)]:
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    for c in _containers(pod):
      for m in c.get("volumeMounts", []):
        assert m["name"] in volumes, f"{label}/{c['name']}: mounts undefined volume {m['name']}"
    for v in volumes.values():
      if "persistentVolumeClaim" in v:
        assert v["persistentVolumeClaim"]["claimName"] in claims, f"{label}: unknown claim"


def test_trainers_read_data_read_only_and_write_to_the_runs_volume():
  checked = 0
  for doc in _all_rendered():
    if doc["kind"] == "MPIJob":
      # The ranks run in the worker pods; the launcher only waits for the data.
      launcher = doc["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]
      worker = doc["spec"]["mpiReplicaSpecs"]["Worker"]["template"]
      runner = (worker, worker["spec"]["containers"][0])
      argv = _rank_command(_argv(launcher["spec"]["containers"][0]))
      waiter = (launcher, launcher["spec"]["initContainers"][0])
    elif doc["kind"] == "Job" and any(
      a.startswith("trainers/") for c in _containers(doc["spec"]["template"]) for a in _argv(c)
    ):
      pod = doc["spec"]["template"]
      runner = (pod, pod["spec"]["containers"][0])
      argv = _argv(runner[1])
      waiter = (pod, pod["spec"]["initContainers"][0])
    else:
      continue
    checked += 1
    flags = dict(_flag_values(argv))
    data_dir, model_dir = flags["--data-dir"], flags["--model-dir"]
    mounts = _mounts(*runner)
    assert _claim_at(mounts, data_dir) == (DATA_CLAIM, True), f"{doc['metadata']['name']}: data"
    assert _claim_at(mounts, model_dir) == (RUNS_CLAIM, False), f"{doc['metadata']['name']}: runs"
    # The wait-for init container waits for this run's own file, on the same volume.
    wait_for = {e["name"]: e["value"] for e in waiter[1]["env"]}["WAIT_FOR"]
    mode = flags.get("--mode", "train_and_eval")
    expected = (
      f"{model_dir}/export/saved_model.pb" if mode == "eval" else f"{data_dir}/metadata.json"
    )
    assert wait_for == expected, f"{doc['metadata']['name']}: waits for {wait_for}"
    assert _claim_at(_mounts(*waiter), wait_for)[0] == _claim_at(mounts, wait_for)[0]
  # Train and eval, for cifar10, mnist and catdog; elastic and queued (kueue)
  # training; the three rehearsals' training. TrainJobs: tests/test_k8s_trainer.py.
  assert checked == 11


def test_tensorboard_service_targets_the_deployment():
  (deployment,) = _by_kind(_base_docs(), "Deployment")
  (service,) = _by_kind(_base_docs(), "Service")
  pod = deployment["spec"]["template"]
  labels = pod["metadata"]["labels"]
  assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
  assert service["spec"]["selector"].items() <= labels.items()
  (c,) = pod["spec"]["containers"]
  ports = {p["name"]: p["containerPort"] for p in c["ports"]}
  (port,) = service["spec"]["ports"]
  target = port["targetPort"]
  container_port = ports[target] if isinstance(target, str) else target
  assert container_port in ports.values()
  argv = _argv(c)
  assert argv[0] == "tensorboard" and "--bind_all" in argv
  flags = dict(_flag_values(argv))
  assert int(flags["--port"]) == container_port == port["port"] == 6006
  assert _mounts(pod, c)[flags["--logdir"]] == (RUNS_CLAIM, True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not on PATH")
def test_kustomize_builds_what_the_tests_check():
  for path in _kustomizations():
    # Default load restrictions: what `kubectl apply -k`, Argo CD and Flux use.
    result = subprocess.run(
      ["kubectl", "kustomize", str(path.parent)],
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
    )
    assert result.returncode == 0, f"{path}: {result.stderr}"
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    names = sorted((d["kind"], d["metadata"]["name"]) for d in built)
    assert names == sorted((d["kind"], d["metadata"]["name"]) for d in _render(path))
    image = _image(path)
    want = f"{image['newName']}:{image['newTag']}"
    for doc in built:
      assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cnn-pipeline"
      for _, pod in _pods(doc):
        for c in _containers(pod):
          assert c["image"] == want, f"{path}: {c['name']}"


def _image(kustomization):
  """The image transformer that decides a kustomization's image: its own, or its base's."""
  spec = _load(kustomization)[0]
  if spec.get("images"):
    (image,) = spec["images"]
    return image
  (base,) = [r for r in spec["resources"] if (kustomization.parent / r).is_dir()]
  return _image((kustomization.parent / base).resolve() / "kustomization.yaml")


def test_paths_named_in_docs_and_comments_exist():
  pattern = re.compile(
    r"(?<![\w/.-])((?:docker|k8s|scripts|trainers|pipeline|preprocess|tests)"
    r"/[\w.-]+(?:/[\w.-]+)*)(:\d)?"
  )
  texts = (
    [K8S / "README.md", ROOT / "docs" / "cluster.md"]
    + _manifest_files()
    + _kustomizations()
    + sorted(ELASTIC_COMPONENT.iterdir())
    + sorted((K8S / "jobs").rglob("*.yaml"))
    + sorted(DOCKER.iterdir())
  )
  checked = 0
  for path in texts:
    for ref, tag in pattern.findall(path.read_text()):
      if tag:  # an image, e.g. docker/dockerfile:1
        continue
      checked += 1
      assert (ROOT / ref.rstrip(".")).exists(), f"{path.relative_to(ROOT)} names missing {ref}"
  assert checked >= 20


# ---- what a cluster admits ----------------------------------------------------


def _strict(schema):
  """The schema with unknown fields refused, as kubectl's strict field validation does."""
  if isinstance(schema, list):
    return [_strict(s) for s in schema]
  if not isinstance(schema, dict):
    return schema
  out = {k: _strict(v) for k, v in schema.items()}
  if (
    "properties" in schema
    and "additionalProperties" not in schema
    and not schema.get("x-kubernetes-preserve-unknown-fields")
  ):
    out["additionalProperties"] = False
  return out


@functools.cache
def _crd_validator(kind):
  """A strict validator of one custom resource kind against its vendored CRD schema."""
  jsonschema = pytest.importorskip("jsonschema")
  schema = _strict(json.loads((SCHEMAS / CRD_SCHEMAS[kind]).read_text()))
  return jsonschema.Draft7Validator(schema)


def _mpijob_validator():
  return _crd_validator("MPIJob")


def _kubernetes_validate():
  """The pinned kubernetes-validate; a missing package fails (it is in requirements.txt)."""
  try:
    import kubernetes_validate
  except ImportError:
    pytest.fail(
      "kubernetes-validate is not installed: `make install` (requirements.txt) installs it"
    )
  return kubernetes_validate


def test_every_object_passes_the_kubernetes_schemas_in_strict_mode():
  kv = _kubernetes_validate()
  checked = 0
  for doc in _all_rendered():
    where = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] in CRD_SCHEMAS:
      validator = _crd_validator(doc["kind"])
      errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
      assert not errors, f"{where} vs its CRD ({CRD_SCHEMAS[doc['kind']]}): " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
      )
      # The CRD leaves metadata open; hold it to what the API server accepts.
      kv.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]},
        KUBERNETES_VERSIONS[-1],
        strict=True,
      )
    else:
      for version in KUBERNETES_VERSIONS:
        try:
          kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
          pytest.fail(f"{where} vs Kubernetes {version}: {e}")
    checked += 1
  assert checked >= 10


def test_the_mpijob_schema_check_refuses_what_the_operator_refuses():
  (job,) = [d for d in _render(BASE / "kustomization.yaml") if d["kind"] == "MPIJob"]
  assert not list(_mpijob_validator().iter_errors(job))
  for path, value in [
    ("/spec/mpiImplementation", "OpenMPI4"),
    ("/spec/slotsPerWorkers", 2),
    ("/spec/mpiReplicaSpecs/Worker/template/spec/containers/0/portz", []),
  ]:
    broken = _json_patch(job, [{"op": "add", "path": path, "value": value}])
    assert list(_mpijob_validator().iter_errors(broken)), f"schema accepts {path}={value!r}"


# Pod Security Standards, "restricted" profile (Kubernetes 1.29+), field by field.
_PSS_VOLUME_TYPES = {
  "configMap",
  "csi",
  "downwardAPI",
  "emptyDir",
  "ephemeral",
  "persistentVolumeClaim",
  "projected",
  "secret",
}


def _restricted_violations(pod):
  spec, out = pod["spec"], []
  pod_sc = spec.get("securityContext", {})
  for field in ("hostNetwork", "hostPID", "hostIPC"):
    if spec.get(field):
      out.append(field)
  for v in spec.get("volumes", []):
    kinds = set(v) - {"name"}
    if not kinds <= _PSS_VOLUME_TYPES:
      out.append(f"volume {v['name']}: {sorted(kinds - _PSS_VOLUME_TYPES)}")
  if pod_sc.get("runAsUser") == 0:
    out.append("pod runAsUser 0")
  pod_seccomp = pod_sc.get("seccompProfile", {}).get("type")
  for c in _containers(pod) + spec.get("ephemeralContainers", []):
    sc, name = c.get("securityContext", {}), c["name"]
    if sc.get("privileged"):
      out.append(f"{name}: privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
      out.append(f"{name}: allowPrivilegeEscalation not false")
    caps = sc.get("capabilities", {})
    if "ALL" not in caps.get("drop", []):
      out.append(f"{name}: capabilities not dropping ALL")
    if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
      out.append(f"{name}: adds capabilities {caps['add']}")
    if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
      out.append(f"{name}: runAsNonRoot not true")
    if sc.get("runAsUser") == 0:
      out.append(f"{name}: runAsUser 0")
    if sc.get("seccompProfile", {}).get("type", pod_seccomp) not in ("RuntimeDefault", "Localhost"):
      out.append(f"{name}: seccompProfile not RuntimeDefault/Localhost")
    if sc.get("procMount", "Default") != "Default":
      out.append(f"{name}: procMount")
    for port in c.get("ports", []):
      if port.get("hostPort"):
        out.append(f"{name}: hostPort {port['hostPort']}")
  return out


def test_every_pod_meets_pod_security_restricted():
  pods = [(f"{doc['kind']}/{label}", pod) for doc in _all_rendered() for label, pod in _pods(doc)]
  assert len(pods) >= 10
  for where, pod in pods:
    assert not _restricted_violations(pod), f"{where}: {_restricted_violations(pod)}"
    spec = pod["spec"]
    # Beyond the profile: no API token in pods that never call the API, and
    # the volumes writable by the image's user (uid 1000, docker/configure_ssh.sh).
    assert spec.get("automountServiceAccountToken") is False, (
      f"{where}: mounts a service-account token"
    )
    assert (
      spec["securityContext"]["runAsUser"] == 1000 and spec["securityContext"]["fsGroup"] == 1000
    ), where
  # The check itself: a root pod with the defaults fails it on every count.
  assert (
    len(
      _restricted_violations(
        {
          "spec": {
            "containers": [{"name": "c"}],
            "hostNetwork": True,
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
          }
        }
      )
    )
    == 6
  )


def test_gpu_pods_go_to_gpu_nodes_and_cpu_pods_stay_off_them():
  checked = 0
  for doc in _all_rendered():
    for label, pod in _pods(doc):
      spec = pod["spec"]
      gpus = any(
        "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in _containers(pod)
      )
      terms = (
        spec.get("affinity", {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
      )
      off_gpu = bool(terms) and all(
        {"key": GPU_NODE_LABEL, "operator": "NotIn", "values": ["true"]} in t["matchExpressions"]
        for t in terms
      )
      if gpus:
        assert spec["nodeSelector"] == {GPU_NODE_LABEL: "true"}, (
          f"{label}: GPU pod without node selector"
        )
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
          "tolerations"
        ]
        assert not off_gpu
      else:
        assert off_gpu, f"{label}: CPU-only pod may land on a GPU node"
        assert "tolerations" not in spec and "nodeSelector" not in spec, label
      checked += 1
  assert checked >= 10


def test_gpu_check_job_checks_as_many_gpus_as_it_requests(probe):
  """k8s/jobs/gpu-check runs `make gpu-check`'s script on one GPU node, failing with fewer GPUs."""
  (job,) = _render(K8S / "jobs" / "gpu-check" / "kustomization.yaml")
  assert job["kind"] == "Job" and job["spec"]["backoffLimit"] == 0
  pod = job["spec"]["template"]
  (c,) = _containers(pod)
  argv = _argv(c)
  assert argv[:3] == ["python", "-m", "bench.gpu_check"]
  assert re.search(
    r"^gpu-check:.*\n\t\$\(PY\) -m bench\.gpu_check ", (ROOT / "Makefile").read_text(), re.M
  )
  flags = dict(_flag_values(argv))
  gpus = c["resources"]["limits"]["nvidia.com/gpu"]
  assert int(flags["--gpus"]) == gpus >= 2, "--gpus must equal the GPUs requested (2+ for NCCL)"
  assert "--data-dir" not in flags  # it makes its own sample data, on the pod's scratch volume
  assert (
    _claim_at({m["mountPath"]: m["name"] for m in c["volumeMounts"]}, flags["--work-dir"])
    == "scratch"
  )
  volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
  assert "emptyDir" in volumes["scratch"] and volumes["dshm"]["emptyDir"]["medium"] == "Memory"
  assert "exit codes:" in probe["helps"][("module", "bench.gpu_check")]
  # The GPU image, which the Job runs, has bench/ (its `COPY . .`; the .dockerignore keeps it).
  ignored = [
    l.strip()
    for l in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    if l.strip() and not l.startswith("#")
  ]
  assert not [p for p in ignored if p.strip("/").split("/")[0] in ("bench", "bench*")], ignored
  assert ("COPY", ". .") in _instructions(DOCKER / "Dockerfile")


def test_pods_that_can_wait_forever_have_a_deadline():
  for doc in _all_rendered():
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] == "Job":
      # Init containers that wait for another job's file, or a stuck download.
      assert doc["spec"]["activeDeadlineSeconds"] > 0, name
    elif doc["kind"] == "MPIJob":
      assert doc["spec"]["runPolicy"]["activeDeadlineSeconds"] > 0, name
  # Evaluation waits for training: its deadline outlasts training's.
  base = {(d["kind"], d["metadata"]["name"]): d for d in _render(BASE / "kustomization.yaml")}
  assert (
    base[("Job", "eval-cifar10")]["spec"]["activeDeadlineSeconds"]
    > base[("MPIJob", "train-cifar10")]["spec"]["runPolicy"]["activeDeadlineSeconds"]
  )


def test_the_rehearsal_runs_the_rendered_commands_not_copies():
  """`make cluster-test` reads every command from the rendered overlay; none is spelled in the script."""
  # The rehearsal is scripts/cluster_test.py and the cluster_*.py modules beside it.
  script = "".join(p.read_text() for p in sorted((ROOT / "scripts").glob("cluster_*.py")))
  assert 'OVERLAY = ROOT / "k8s" / "overlays" / "rehearsal"' in script
  assert 'ELASTIC_OVERLAY = ROOT / "k8s" / "overlays" / "rehearsal-elastic"' in script
  tokens = {t for _, _, c in _all_containers() for t in _argv(c) if "=" in t or "/" in t}
  rehearsal = [
    d
    for name in (REHEARSAL, REHEARSAL_ELASTIC)
    for d in _render(K8S / "overlays" / name / "kustomization.yaml")
  ]
  tokens |= {
    t
    for doc in rehearsal
    for _, pod in _pods(doc)
    for c in _containers(pod)
    for t in _argv(c)
    if "=" in t or "/" in t
  }
  assert len(tokens) >= 20
  # The hostfile's path is the operator's (it mounts its ConfigMap there), and so the script's too.
  copied = sorted(t for t in tokens - {"/etc/mpi/hostfile"} if t in script)
  assert not copied, f"scripts/cluster_*.py spell out manifest arguments: {copied}"
  ci = (ROOT / ".ci" / "run").read_text().split()
  assert ci.index("cluster-test") > ci.index("test"), ".ci/run: make cluster-test after make test"
  assert re.search(r"^cluster-test:", (ROOT / "Makefile").read_text(), re.M)


# ---- the images ----------------------------------------------------------------


def _instructions(dockerfile):
  """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
  lines, current = [], ""
  for line in dockerfile.read_text().splitlines():
    if line.strip().startswith("#") or not line.strip():
      continue
    current += line.rstrip()
    if current.endswith("\\"):
      current = current[:-1] + " "
      continue
    word, _, rest = current.strip().partition(" ")
    lines.append((word.upper(), rest.strip()))
    current = ""
  return lines


def test_images_copy_only_files_that_exist_and_install_like_make_install():
  assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.cpu"]
  for dockerfile in DOCKERFILES:
    steps = _instructions(dockerfile)
    for word, rest in steps:
      if word == "COPY" and "--from=" not in rest:
        *sources, _ = shlex.split(rest)
        for source in sources:
          assert (ROOT / source).exists(), f"{dockerfile.name}: COPY of missing {source}"
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert runs.count("bash scripts/install.sh") == 2, f"{dockerfile.name}: deps, then code"
    for script in re.findall(r"\b(?:bash|sh) ((?:scripts|docker)/\S+)", runs):
      assert (ROOT / script).is_file(), f"{dockerfile.name}: runs missing {script}"
    ignore = (DOCKER / f"{dockerfile.name}.dockerignore").read_text().split()
    # A copied host .venv would be reused by install.sh instead of built for the image.
    assert {".venv", ".cache", "data", "runs", ".git"} <= set(ignore)


def test_horovod_patch_lives_only_in_install_script():
  assert "xla_mpi_ops" in (ROOT / "scripts" / "install.sh").read_text()
  for path in DOCKER.iterdir():
    for patched in ("xla_mpi_ops", "AsGpuStreamValue"):
      assert patched not in path.read_text(), (
        f"{path.name} patches Horovod outside scripts/install.sh"
      )


def _args(dockerfile):
  return dict(
    rest.split("=", 1) for word, rest in _instructions(dockerfile) if word == "ARG" and "=" in rest
  )


def _stages(dockerfile):
  """The instructions of each FROM stage, as lists of (INSTRUCTION, arguments)."""
  stages = []
  for word, rest in _instructions(dockerfile):
    if word == "FROM":
      stages.append([])
    if stages:
      stages[-1].append((word, rest))
  return stages


def test_images_use_the_python_of_setup_py():
  ((low, high),) = re.findall(
    r'python_requires=">=(3\.\d+),<(3\.\d+)"', (ROOT / "setup.py").read_text()
  )
  # The base is a build argument whose default is the public image.
  assert _args(DOCKER / "Dockerfile.cpu")["BASE"] == f"python:{low}-slim-bookworm"
  assert [rest for word, rest in _instructions(DOCKER / "Dockerfile.cpu") if word == "FROM"] == [
    "${BASE} AS build",
    "${BASE}",
  ]
  # The GPU image uses Debian trixie's python3, 3.13 (the release with the CUDA toolkit).
  args = _args(DOCKER / "Dockerfile")
  assert args["BUILD_BASE"] == args["RUNTIME_BASE"] == "debian:trixie-slim"
  assert int(low.split(".")[1]) <= 13 < int(high.split(".")[1])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_build_in_one_stage_and_run_non_root_without_a_compiler(dockerfile):
  build, runtime = _stages(dockerfile)
  apt = lambda stage: " ".join(
    rest for word, rest in stage if word == "RUN" and "apt-get install" in rest
  )
  # Everything Horovod's build needs (cmake comes from pip, requirements.txt).
  # (g++-13 in the GPU image: nvcc 12.4's newest host compiler.)
  packages = set(apt(build).split())
  assert "make" in packages and any(re.fullmatch(r"g\+\+(-\d+)?", p) for p in packages), (
    f"{dockerfile.name}: build stage lacks g++/make"
  )
  assert re.search(r"^cmake\b", (ROOT / "requirements.txt").read_text(), re.M)
  # The runtime stage installs no compiler and takes the build's venv.
  tools = {"g++", "gcc", "make", "cmake", "build-essential", "clang"}
  installed = {re.sub(r"-\d+$", "", p) for p in apt(runtime).split()}
  assert not tools & installed, f"{dockerfile.name}: compiler in the runtime image"
  assert not {p for p in installed if "cuda" in p or "nccl" in p or "cudnn" in p}, (
    f"{dockerfile.name}: a CUDA package in the runtime stage (pip's copies serve)"
  )
  assert ("COPY", "--from=build /workspace /workspace") in runtime
  # Non-root, numeric (runAsNonRoot cannot check a name), and the same uid the
  # manifests run as; sshd for the MPI Operator comes with the user.
  users = [rest for word, rest in runtime if word == "USER"]
  assert users == ["1000:1000"], f"{dockerfile.name}: USER {users}"
  assert (
    "openssh-server" in apt(runtime)
    and ("RUN", "sh /tmp/configure_ssh.sh && rm /tmp/configure_ssh.sh") in runtime
  )
  # The CA bundle for pip is a build secret, never a file in a layer.
  assert "ca-certificates.crt" not in " ".join(
    rest for word, rest in _instructions(dockerfile) if word != "RUN"
  )
  for word, rest in _instructions(dockerfile):
    if word == "RUN" and "install.sh" in rest:
      assert "--mount=type=secret,id=pip_ca" in rest and "PIP_CERT=/run/secrets/pip_ca" in rest
  assert "useradd --uid 1000" in SSH_SETUP.read_text()


def _pins(path):
  return dict(
    line.split("#")[0].strip().split("==")
    for line in path.read_text().splitlines()
    if "==" in line.split("#")[0]
  )


def test_gpu_image_cuda_matches_the_pinned_cuda_libraries():
  steps = _instructions(DOCKER / "Dockerfile")
  args = _args(DOCKER / "Dockerfile")
  froms = [rest for word, rest in steps if word == "FROM"]
  assert froms == ["${BUILD_BASE} AS build", "${RUNTIME_BASE}"]
  pins = _pins(DOCKER / "constraints-gpu.txt")
  # One CUDA minor version across TensorFlow's libraries.
  minors = {
    ".".join(pins[p].split(".")[:2])
    for p in ("nvidia-cuda-runtime-cu12", "nvidia-cuda-nvcc-cu12", "nvidia-cuda-nvrtc-cu12")
  }
  assert len(minors) == 1, minors
  (runtime_minor,) = minors
  # Debian's nvcc compiles Horovod's kernels: same major, minor at or below the
  # runtime's (a binary built with 12.4 runs on the 12.5 runtime, not the reverse).
  toolkit = args["CUDA_TOOLKIT_VERSION"]
  major, minor = (int(x) for x in toolkit.split(".")[:2])
  r_major, r_minor = (int(x) for x in runtime_minor.split("."))
  assert major == r_major == 12 and minor <= r_minor, (
    f"toolkit {toolkit} vs runtime {runtime_minor}"
  )
  apt = " ".join(rest for word, rest in steps if word == "RUN" and "apt-get install" in rest)
  assert "nvidia-cuda-toolkit=${CUDA_TOOLKIT_VERSION}" in apt
  assert "contrib non-free" in apt  # where trixie keeps the toolkit
  env = " ".join(rest for word, rest in steps if word == "ENV")
  assert "HOROVOD_GPU_OPERATIONS=NCCL" in env
  # The compute capabilities are ones this nvcc builds SASS for (12.4: sm_50 to sm_90).
  ccs = [int(cc) for cc in args["HOROVOD_BUILD_CUDA_CC_LIST"].split(",")]
  assert ccs and all(50 <= cc <= 90 for cc in ccs), ccs


def test_gpu_image_pins_come_only_from_the_pin_files():
  """One pin list: the Dockerfile installs Python packages only through install.sh."""
  text = (DOCKER / "Dockerfile").read_text()
  runs = " ".join(rest for word, rest in _instructions(DOCKER / "Dockerfile") if word == "RUN")
  assert "pip install" not in runs and "pip3 install" not in runs
  assert not re.search(r"\b[\w.-]+==\d", runs), "a pinned package in a RUN of the Dockerfile"
  # The CUDA wheels are pinned once, in constraints-gpu.txt, and nowhere else.
  others = [
    text,
    (ROOT / "constraints.txt").read_text(),
    (ROOT / "scripts" / "install.sh").read_text(),
  ]
  for package in _pins(DOCKER / "constraints-gpu.txt"):
    assert not any(f"{package}==" in other for other in others), f"{package} pinned twice"


@pytest.mark.parametrize(
  "script", ["scripts/install.sh", "docker/gpu_requirements.sh", "docker/configure_ssh.sh"]
)
def test_image_build_scripts_parse(script):
  shell = "sh" if script.endswith("configure_ssh.sh") else "bash"
  subprocess.run([shell, "-n", str(ROOT / script)], check=True, timeout=30)


def test_gpu_requirements_swap_only_tensorflow(tmp_path):
  (tmp_path / "docker").mkdir()
  for name in ("gpu_requirements.sh", "constraints-gpu.txt"):
    shutil.copy(DOCKER / name, tmp_path / "docker" / name)
  original = (ROOT / "requirements.txt").read_text()
  (tmp_path / "requirements.txt").write_text(original)
  for _ in range(2):  # the Dockerfile runs it after each COPY; a second run changes nothing
    subprocess.run(
      ["bash", str(tmp_path / "docker" / "gpu_requirements.sh")], check=True, timeout=60
    )
  rewritten = (tmp_path / "requirements.txt").read_text()

  def requirements(text):
    return [l.split("#")[0].strip() for l in text.splitlines() if l.split("#")[0].strip()]

  before, after = requirements(original), requirements(rewritten)
  (cpu,) = [r for r in before if r.startswith("tensorflow-cpu==")]
  version = cpu.split("==")[1]
  assert after == [f"tensorflow[and-cuda]=={version}" if r == cpu else r for r in before] + [
    "-c docker/constraints-gpu.txt"
  ]
