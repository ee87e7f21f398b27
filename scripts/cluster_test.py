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
4. the elastic MPIJob of k8s/overlays/rehearsal-elastic (cluster_elastic.py):
   its workers answer to the headless Service's name in the network's DNS, the
   launcher's horovodrun discovers them with docker/discover_hosts.sh; one
   worker is removed mid-run (the job goes on), a new one added (the job
   grows), and the run finishes its step budget with an evaluation; the
   seconds from each change to training again are printed;
5. the Kubeflow Trainer v2 runtime of k8s/overlays/rehearsal-trainjob
   (cluster_trainjob.py): its launcher command (docker/trainjob_launcher.sh,
   horovodrun) with the TrainJob's rank command, against its node pods, with
   the hostfile and keys mounted as Trainer v2 mounts them;
6. the evaluation Job, and TensorBoard's readiness probe against the
   Deployment's TensorBoard command;
7. the MPIJob queued by Kueue (k8s/overlays/rehearsal-kueue,
   cluster_preempt.py), preempted three times -- in its first minute, mid-run,
   in its final evaluation -- by deleting every pod at once as the operator
   does on suspension (preStop hook, SIGTERM, grace period); each time every
   rank must stop at one step, with rank 0's checkpoint on disk within the
   grace period and exit 75, and the re-created pods must resume at exactly
   that step. The seconds from SIGTERM to the checkpoint and from re-creation
   to training again are printed.

Each phase asserts real outcomes (exit codes, checkpoint files, metrics.json,
the SavedModel, log lines) and the script prints how long each took. Exit 0
when all pass; otherwise a one-line reason and the work directory with every
container's log.

What it cannot show: GPUs (the rehearsal overlay uses the CPU image and CPU
slots), a real API server, scheduler and operator, and network storage; the
volumes are host directories.

Usage (as root, from the repository root; `make cluster-test` installs podman
and friends first):  python scripts/cluster_test.py [--keep] [--work-dir DIR]
[--phases mpijob,elastic,trainjob,evaluation,preempt] (default: all). Two
rehearsals on one machine: give each its own CLUSTER_TEST_PREFIX and
CLUSTER_TEST_SUBNET (scripts/cluster_pod.py).
"""

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from cluster_elastic import ElasticMPIJobRehearsal
from cluster_elastic import lose_and_gain_a_worker
from cluster_image import build_image
from cluster_image import check_image
from cluster_image import ensure_base
from cluster_mpijob import MPIJobRehearsal
from cluster_mpijob import assert_trained
from cluster_mpijob import kill_worker_mid_training
from cluster_mpijob import latest_checkpoint_step
from cluster_mpijob import ssh_logins
from cluster_mpijob import train_args
from cluster_pod import NETWORK
from cluster_pod import PODMAN
from cluster_pod import PREFIX
from cluster_pod import RUN
from cluster_pod import SUBNET
from cluster_pod import Pod
from cluster_pod import RehearsalError
from cluster_pod import argv
from cluster_pod import log
from cluster_pod import resolve_port
from cluster_pod import run
from cluster_pod import run_pod_to_completion
from cluster_preempt import suspend_and_resume
from cluster_trainjob import TrainJobRehearsal
from cluster_trainjob import run_trainjob
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
OVERLAY = ROOT / "k8s" / "overlays" / "rehearsal"
ELASTIC_OVERLAY = ROOT / "k8s" / "overlays" / "rehearsal-elastic"
TRAINJOB_OVERLAY = ROOT / "k8s" / "overlays" / "rehearsal-trainjob"
KUEUE_OVERLAY = ROOT / "k8s" / "overlays" / "rehearsal-kueue"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def render(overlay=OVERLAY):
  """An overlay's objects, keyed by (kind, name), as `kubectl apply -k` would send them."""
  out = run(["kubectl", "kustomize", str(overlay)]).stdout
  return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}


@dataclasses.dataclass
class Rehearsal:
  """What one step leaves for the next: the work directory, rendered objects, volumes, timings."""

  work: pathlib.Path
  timings: list = dataclasses.field(default_factory=list)
  objects: dict = dataclasses.field(default_factory=dict)
  image: str = ""
  claims: dict = dataclasses.field(default_factory=dict)
  prep_flags: dict = dataclasses.field(default_factory=dict)
  dataset: str = ""
  flags: dict = dataclasses.field(default_factory=dict)
  mpi: MPIJobRehearsal | None = None
  # Measurements printed under the timing table (title, seconds).
  measured: list = dataclasses.field(default_factory=list)

  def obj(self, kind, name):
    return self.objects[(kind, name)]

  def model_dir(self, runs):
    return runs / pathlib.Path(self.flags["--model-dir"]).relative_to("/runs")


# ---- the steps, in order -----------------------------------------------------------


def render_step(r):
  r.objects = render()
  rehearsed = [
    r.obj("Job", "build-tfrecords"),
    r.obj("MPIJob", "train-cifar10"),
    r.obj("Job", "eval-cifar10"),
    r.obj("Deployment", "tensorboard"),
  ]
  images = {
    c["image"]
    for obj in rehearsed
    for t in (
      [obj["spec"]["template"]]
      if "template" in obj["spec"]
      else [s["template"] for s in obj["spec"]["mpiReplicaSpecs"].values()]
    )
    for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]
  }
  if len(images) != 1:
    raise RehearsalError(f"the rehearsal pods use several images: {sorted(images)}")
  (r.image,) = images


def image_step(r):
  base = ensure_base(r.work)
  size = build_image(r.image, base, r.work)
  log(f"   {r.image}: {size / 1e9:.2f} GB, base {base}")
  check_image(r.image)


def volumes_step(r):
  """The PersistentVolumeClaims and the preprocess Job's flags (the sample data follows them)."""
  # Host directories owned by the pods' fsGroup, as the kubelet makes a volume writable for it.
  for claim in ("cnn-data", "cnn-runs"):
    r.claims[claim] = r.work / claim
    r.claims[claim].mkdir()
    os.chown(r.claims[claim], 1000, 1000)
  (prep_container,) = r.obj("Job", "build-tfrecords")["spec"]["template"]["spec"]["containers"]
  r.prep_flags = dict(
    t.split("=", 1) for t in argv(prep_container) if t.startswith("--") and "=" in t
  )
  r.dataset = r.prep_flags["--dataset"]


def preprocess_step(r):
  data, dataset = r.claims["cnn-data"], r.dataset
  # Raw files onto the data volume, as k8s/README.md's "Without internet" does.
  run(
    RUN
    + ["--rm", "--network", "none", "--user", "1000:1000", "-v", f"{data}:/data", r.image]
    + ["python", "-m", "preprocess.sample_data"]
    + ["--out-dir", r.prep_flags["--raw-dir"], "--dataset", dataset]
  )
  pod = Pod(r.obj("Job", "build-tfrecords")["spec"]["template"], r.claims)
  text = run_pod_to_completion("build-tfrecords", pod, r.image, r.work)
  out_dir = data / pathlib.Path(r.prep_flags["--out-dir"]).relative_to("/data") / dataset
  metadata = json.loads((out_dir / "metadata.json").read_text())
  shards = sorted(out_dir.rglob("*.tfrecord*"))
  if not shards or metadata["dataset"] != dataset:
    raise RehearsalError(
      f"preprocess wrote no shards or wrong metadata in {out_dir}:\n{text[-2000:]}"
    )
  log(f"   {len(shards)} shards, splits {sorted(metadata['splits'])}")


def mpijob_setup_step(r):
  job = r.obj("MPIJob", "train-cifar10")
  r.flags = train_args(job)
  r.mpi = MPIJobRehearsal(job, r.image, r.work, r.claims)
  r.mpi.setup()


def mpijob_step(r):
  mpi = r.mpi
  mpi.start_pods()
  code, text = mpi.run_launcher(1)
  if code != 0:
    raise RehearsalError(f"launcher exited {code}:\n{text[-4000:]}")
  max_steps = int(r.flags["--max-steps"])
  values = assert_trained(r.model_dir(r.claims["cnn-runs"]), max_steps, text, "MPIJob")
  mpi.check_workers_unprivileged()
  logins = [ssh_logins(i) for i in range(mpi.replicas)]
  if not all(logins):
    raise RehearsalError(f"not every worker ran ranks (ssh logins per worker: {logins})")
  log(
    f"   exit 0; sshd as uid 1000, no capabilities, no new privileges; ssh logins per worker "
    f"{logins}; metrics {json.dumps(values)[:200]}"
  )


def kill_and_resume_step(r):
  mpi, max_steps = r.mpi, int(r.flags["--max-steps"])
  runs2 = r.work / "cnn-runs-2"
  runs2.mkdir()
  os.chown(runs2, 1000, 1000)
  mpi.claims = dict(r.claims, **{"cnn-runs": runs2})
  model_dir2 = r.model_dir(runs2)
  mpi.start_pods()
  saved, at_kill, code, took = kill_worker_mid_training(mpi, model_dir2, max_steps)
  log(f"   killed worker 1 after checkpoint {saved}; launcher exited {code} in {took:.1f} s")
  # The worker's container restarts in its pod (restartPolicy OnFailure);
  # the launcher Job starts a new launcher pod (backoffLimit).
  mpi.start_worker(1)
  mpi.wait_ready(1)
  # The surviving worker's rank may finish one more checkpoint after horovodrun
  # has exited: the rerun must resume from the last one on disk when it starts.
  at_kill = latest_checkpoint_step(model_dir2)
  code, text = mpi.run_launcher(3)
  resumed = re.search(r"resumed from (\S+) at step (\d+)", text)
  if code != 0 or not resumed:
    raise RehearsalError(f"the rerun exited {code}, resumed: {bool(resumed)}:\n{text[-4000:]}")
  if int(resumed.group(2)) != at_kill:
    raise RehearsalError(
      f"resumed at step {resumed.group(2)}, but the last checkpoint was {at_kill}"
    )
  assert_trained(model_dir2, max_steps, text, "resumed MPIJob")
  log(f"   {resumed.group(0)}; finished {max_steps} steps and exported")
  r.timings.append(("  (launcher exit after the kill)", took))


def mpijob_cleanup_step(r):
  r.mpi.cleanup()


def elastic_step(r):
  """The elastic MPIJob: a worker removed and a new one added mid-run (cluster_elastic.py)."""
  objects = render(ELASTIC_OVERLAY)
  (job,) = [o for (kind, _), o in objects.items() if kind == "MPIJob"]
  images = {
    c["image"]
    for spec in job["spec"]["mpiReplicaSpecs"].values()
    for c in spec["template"]["spec"].get("initContainers", [])
    + spec["template"]["spec"]["containers"]
  }
  if images != {r.image}:
    raise RehearsalError(f"the elastic MPIJob runs {sorted(images)}, not the rehearsal's {r.image}")
  (service,) = [
    o
    for (kind, _), o in objects.items()
    if kind == "Service" and o["spec"].get("clusterIP") == "None"
  ]
  runs = r.work / "cnn-runs-elastic"
  runs.mkdir()
  os.chown(runs, 1000, 1000)
  work = r.work / "elastic"
  (work / "logs").mkdir(parents=True)
  r.mpi = ElasticMPIJobRehearsal(job, service, r.image, work, dict(r.claims, **{"cnn-runs": runs}))
  r.mpi.setup()
  r.mpi.start_pods()
  flags = train_args(job)
  max_steps = int(flags["--max-steps"])
  model_dir = runs / pathlib.Path(flags["--model-dir"]).relative_to("/runs")
  m, victim = lose_and_gain_a_worker(r.mpi, model_dir, max_steps)
  log(
    f"   removed worker {victim} after step {m.removed_at_step}: world size 2 -> 1 at step "
    f"{m.shrunk_at_step}; added worker {r.mpi.replicas}: 1 -> 2 at step {m.grown_at_step}; "
    f"finished {max_steps} steps, evaluated and exported"
  )
  r.measured += [
    ("elastic: worker removed -> world size 2 -> 1 logged", m.lost_to_reformed),
    ("elastic: worker removed -> training again (next progress line)", m.lost_to_training),
    ("elastic: the trainer's own re-form time after the loss", m.reformed_shrink),
    ("elastic: new worker ready, in DNS -> world size 1 -> 2 logged", m.ready_to_grown),
    ("elastic: new worker ready, in DNS -> training again", m.ready_to_training),
    ("elastic: the trainer's own re-form time after the join", m.reformed_grow),
  ]


def _fresh_runs(r, name):
  """An empty runs volume of the pods' fsGroup, for a phase that starts a run of its own."""
  runs = r.work / name
  runs.mkdir()
  os.chown(runs, 1000, 1000)
  return runs


def _one(objects, kind):
  (obj,) = [o for (k, _), o in objects.items() if k == kind]
  return obj


def trainjob_step(r):
  """The Trainer v2 runtime's launcher command against its node pods (cluster_trainjob.py)."""
  objects = render(TRAINJOB_OVERLAY)
  runtime, trainjob = _one(objects, "ClusterTrainingRuntime"), _one(objects, "TrainJob")
  images = {
    c["image"]
    for rj in runtime["spec"]["template"]["spec"]["replicatedJobs"]
    for c in rj["template"]["spec"]["template"]["spec"]["containers"]
  }
  if images != {r.image}:
    raise RehearsalError(f"the runtime runs {sorted(images)}, not the rehearsal's {r.image}")
  runs = _fresh_runs(r, "cnn-runs-trainjob")
  work = r.work / "trainjob"
  (work / "logs").mkdir(parents=True)
  claims = dict(r.claims, **{"cnn-runs": runs})
  r.mpi = TrainJobRehearsal(runtime, trainjob, r.image, work, claims)
  flags = dict(a.split("=", 1) for a in trainjob["spec"]["trainer"]["args"] if "=" in a)
  model_dir = runs / pathlib.Path(flags["--model-dir"]).relative_to("/runs")
  hostfile, _ = run_trainjob(r.mpi, model_dir, int(flags["--max-steps"]))
  log(
    f"   hostfile as Trainer v2 writes it: {hostfile.strip()!r}; the runtime's launcher "
    f"command trained {flags['--max-steps']} steps on {len(r.mpi.hosts)} pods, evaluated, exported"
  )


def preempt_step(r):
  """The MPIJob queued by Kueue, suspended and resumed three times (cluster_preempt.py)."""
  objects = render(KUEUE_OVERLAY)
  job = _one(objects, "MPIJob")
  if (
    not job["metadata"]["labels"].get(QUEUE_LABEL)
    or job["spec"]["runPolicy"].get("suspend") is not True
  ):
    raise RehearsalError("the queued MPIJob has no queue label or is not created suspended")
  runs = _fresh_runs(r, "cnn-runs-queued")
  work = r.work / "queued"
  (work / "logs").mkdir(parents=True)
  r.mpi = MPIJobRehearsal(job, r.image, work, dict(r.claims, **{"cnn-runs": runs}))
  r.mpi.setup()
  flags = train_args(job)
  model_dir = runs / pathlib.Path(flags["--model-dir"]).relative_to("/runs")
  r.measured += suspend_and_resume(r.mpi, model_dir, int(flags["--max-steps"]))


def tensorboard_cleanup_step(r):
  run(PODMAN + ["rm", "-f", "-t", "0", f"{PREFIX}-tensorboard"], check=False)
  run(PODMAN + ["network", "rm", "-f", NETWORK], check=False)


def evaluation_step(r):
  eval_pod = Pod(r.obj("Job", "eval-cifar10")["spec"]["template"], r.claims)
  text = run_pod_to_completion("eval", eval_pod, r.image, r.work)
  if "precision@1" not in text:
    raise RehearsalError(f"evaluation printed no precision@1:\n{text[-2000:]}")


def wait_http_ok(url, seconds):
  """Polls `url` as the kubelet's httpGet probe does, until it answers 2xx or 3xx."""
  deadline = time.time() + seconds
  while True:
    try:
      with urllib.request.urlopen(url, timeout=5) as response:
        if 200 <= response.status < 400:
          return
    except OSError:
      pass
    if time.time() > deadline:
      logs = run(PODMAN + ["logs", f"{PREFIX}-tensorboard"], check=False)
      raise RehearsalError(
        f"TensorBoard's readiness probe {url} never answered:\n{logs.stderr[-2000:]}"
      )
    time.sleep(1)


def tensorboard_step(r):
  run(PODMAN + ["network", "create", "--internal", "--subnet", SUBNET, NETWORK])
  tb_template = r.obj("Deployment", "tensorboard")["spec"]["template"]
  (c,) = tb_template["spec"]["containers"]
  tb_ip = SUBNET.rsplit(".", 1)[0] + ".20"
  run(
    RUN
    + ["-d", "--name", f"{PREFIX}-tensorboard", "--network", NETWORK, "--ip", tb_ip]
    + Pod(tb_template, r.claims).run_args(c, r.image)
  )
  probe = c["readinessProbe"]["httpGet"]
  url = f"http://{tb_ip}:{resolve_port(c, probe['port'])}{probe['path']}"
  wait_http_ok(url, 120)
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


# Each step's title (formatted with the Rehearsal as `r`) is what the timing table
# shows; steps without a title are quick bookkeeping between phases and untimed.
# The phase (for --phases) of each; None: always run.
STEPS = [
  (None, "render k8s/overlays/rehearsal", render_step),
  (None, "image {r.image} (docker/Dockerfile.cpu)", image_step),
  (None, None, volumes_step),
  (None, "preprocess Job on sample data ({r.dataset})", preprocess_step),
  ("mpijob", None, mpijob_setup_step),
  ("mpijob", "MPIJob: launcher + 2 workers, train, evaluate, export", mpijob_step),
  (
    "mpijob",
    "MPIJob on an empty runs volume: kill worker 1 mid-training, then resume",
    kill_and_resume_step,
  ),
  ("mpijob", None, mpijob_cleanup_step),
  (
    "elastic",
    "elastic MPIJob: a worker removed and one added mid-run, train, evaluate",
    elastic_step,
  ),
  ("elastic", None, mpijob_cleanup_step),
  (
    "trainjob",
    "Trainer v2 runtime: its launcher command on 2 pods, train, evaluate",
    trainjob_step,
  ),
  ("trainjob", None, mpijob_cleanup_step),
  ("evaluation", "evaluation Job", evaluation_step),
  ("evaluation", "TensorBoard Deployment: readiness probe", tensorboard_step),
  ("evaluation", None, tensorboard_cleanup_step),
  (
    "preempt",
    "Kueue-queued MPIJob: preempted in minute 1, mid-run, in evaluation; resumed each time",
    preempt_step,
  ),
  ("preempt", None, mpijob_cleanup_step),
]
PHASES = ("mpijob", "elastic", "trainjob", "evaluation", "preempt")


def run_steps(r, phases=PHASES):
  """Runs STEPS of `phases` in order, timing each titled one into r.timings."""
  for phase, title, step in STEPS:
    if phase is not None and phase not in phases:
      continue
    if title is None:
      step(r)
      continue
    title = title.format(r=r)
    t0 = time.time()
    log(f"== {title}")
    step(r)
    r.timings.append((title, time.time() - t0))
    log(f"   {title}: {time.time() - t0:.0f} s")


def cleanup(r):
  """Removes every rehearsal container and the network, whatever step stopped."""
  if r.mpi is not None:
    r.mpi.cleanup()
  else:
    run(PODMAN + ["network", "rm", "-f", NETWORK], check=False)
  with contextlib.suppress(Exception):
    run(PODMAN + ["rm", "-f", "-t", "0", f"{PREFIX}-tensorboard"], check=False)


def preflight():
  """One line on stderr and False when this machine cannot run the rehearsal."""
  if os.geteuid() != 0:
    print(
      "cluster-test: run as root (rootful podman: static IPs on a private network)", file=sys.stderr
    )
    return False
  for tool in ("podman", "kubectl", "mmdebstrap"):
    if shutil.which(tool) is None:
      print(f"cluster-test: {tool} not found; `make cluster-test` installs it", file=sys.stderr)
      return False
  return True


def main(argv_=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--work-dir", help="where the volumes and logs go (default: a new temporary directory)"
  )
  parser.add_argument("--keep", action="store_true", help="keep the work directory after a success")
  parser.add_argument(
    "--phases",
    default=",".join(PHASES),
    help=f"comma-separated phases to run after the image and the preprocess Job (default: all: "
    f"{','.join(PHASES)}); the evaluation Job needs mpijob's run",
  )
  args = parser.parse_args(argv_)
  phases = args.phases.split(",")
  if not set(phases) <= set(PHASES):
    parser.error(f"--phases: unknown {sorted(set(phases) - set(PHASES))}; known: {PHASES}")
  if not preflight():
    return 2

  work = pathlib.Path(args.work_dir or tempfile.mkdtemp(prefix="cnn-cluster-test-"))
  (work / "logs").mkdir(parents=True, exist_ok=True)
  r, started = Rehearsal(work), time.time()
  try:
    run_steps(r, phases)
  except (RehearsalError, subprocess.TimeoutExpired, KeyError, FileNotFoundError) as e:
    print(f"cluster-test: FAILED: {e}\n(logs and volumes in {work})", file=sys.stderr)
    return 1
  finally:
    cleanup(r)

  log("passed; wall time per phase:")
  for title, seconds in r.timings:
    log(f"  {seconds:7.0f} s  {title}")
  log(f"  {time.time() - started:7.0f} s  total")
  for title, seconds in r.measured:
    log(f"  {seconds:7.1f} s  {title}")
  if args.keep:
    log(f"volumes and logs kept in {work}")
  else:
    shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
