"""Preemption by Kueue, rehearsed with podman: the queued MPIJob suspended and resumed, no step lost.

Where this sits: scripts/cluster_test.py runs it last, on the data the
preprocess Job wrote. It takes the rendered MPIJob of
k8s/overlays/rehearsal-kueue (the rehearsal's job with k8s/components/kueue:
created suspended, no periodic checkpoint within the run) and plays Kueue, the
MPI Operator and the kubelet around it (cluster_mpijob.py starts the pods):

- Kueue admits the job (suspend turns false): the operator starts the pods.
- Kueue preempts it (suspend turns true): the operator deletes every pod at
  once; for each container the kubelet runs its preStop hook, then sends
  SIGTERM, and SIGKILL once terminationGracePeriodSeconds have passed since the
  deletion. Here: `podman exec` of the rendered hook, then `podman stop -t` with
  what is left of the rendered grace period, for every container at the same
  time. Every rank must stop after the same step, rank 0's checkpoint must be on
  disk within the grace period, the ranks must exit 75, and no container may be
  killed by the timeout.
- Kueue re-admits it: new pods, and the new launcher must resume at exactly the
  step the preemption stopped at, as its log says.

One run is preempted three times: in its first minute (at its first progress
line, before any checkpoint exists), mid-run, and during its final evaluation;
then it finishes. The seconds from SIGTERM to the checkpoint on disk and from
re-creation to training again are measured.
"""

import concurrent.futures
import contextlib
import dataclasses
import re
import subprocess
import threading
import time

from cluster_elastic import LogWatcher
from cluster_mpijob import assert_trained
from cluster_mpijob import latest_checkpoint_step
from cluster_pod import PODMAN
from cluster_pod import PREFIX
from cluster_pod import RehearsalError
from cluster_pod import run

PROGRESS = re.compile(r"step (\d+)/(\d+) loss")
RESUMED = r"resumed from \S+ at step (\d+)"
# One line per rank (horovodrun prefixes each rank's lines with "[rank]<stdout>:"):
# in training "preempted at step N"; in a later phase (the final evaluation) the
# stop names the phase and the checkpoint on disk stands (step None).
PREEMPTED = re.compile(
  r"^\[(\d+)\]<std(?:out|err)>:.*(?:preempted at step (\d+)|received SIGTERM during .*stopped)",
  re.M,
)
# The final evaluation has started (trainers/runner.py).
EVALUATING = r"evaluating the weights of step (\d+)"
# Where the suspension comes in a run: after this many steps past the resume.
MID_RUN_STEPS = 10
# A killed container's exit status (SIGKILL: 128 + 9).
KILLED = 137


@dataclasses.dataclass
class Stop:
  """One preemption: the step every rank stopped at and what it took (seconds from the deletion)."""

  step: int
  to_checkpoint: float | None  # None: no new checkpoint (nothing trained since the last one)
  to_gone: float  # every container stopped
  grace: int


def _kubelet_delete(name, template, logs):
  """One pod deleted, as the kubelet does it: preStop hook, SIGTERM, SIGKILL at the grace period."""
  grace = template["spec"].get("terminationGracePeriodSeconds", 30)
  (c,) = template["spec"]["containers"]
  hook = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
  started = time.time()
  if hook:
    # Past the grace period the kubelet sends SIGTERM anyway.
    with contextlib.suppress(subprocess.TimeoutExpired):
      result = run(PODMAN + ["exec", name] + hook, check=False, timeout=grace)
      (logs / f"prestop-{name}.log").write_text(
        f"exit {result.returncode} after {time.time() - started:.1f} s\n"
        f"{result.stdout}{result.stderr}"
      )
  left = max(1, round(grace - (time.time() - started)))
  run(PODMAN + ["stop", "-t", str(left), name], check=False, timeout=grace + 60)
  code = run(PODMAN + ["inspect", "--format", "{{.State.ExitCode}}", name], check=False).stdout
  return name, time.time() - started, int(code.strip() or -1), grace


def delete_every_pod(mpi, launcher):
  """Kueue's suspension: the operator deletes the workers and the launcher at once."""
  pods = [(f"{PREFIX}-worker-{i}", mpi.worker) for i in range(mpi.replicas)]
  pods.append((launcher, mpi.launcher))
  logs = mpi.work / "logs"
  with concurrent.futures.ThreadPoolExecutor(len(pods)) as pool:
    return list(pool.map(lambda p: _kubelet_delete(*p, logs), pods))


def _watch_checkpoint(model_dir, before, seen, stop):
  """Records when a checkpoint newer than `before` is on disk (the state file names it)."""
  while not stop.is_set():
    step = latest_checkpoint_step(model_dir)
    if step is not None and step != before and "at" not in seen:
      seen.update(at=time.time(), step=step)
    time.sleep(0.05)


def preempt(mpi, proc, launcher, log_path, model_dir):
  """Suspends the running job; checks every rank stopped at one step with exit 75, nothing killed."""
  before = latest_checkpoint_step(model_dir)
  seen, stop = {}, threading.Event()
  watcher = threading.Thread(target=_watch_checkpoint, args=(model_dir, before, seen, stop))
  watcher.start()
  deleted = time.time()
  try:
    pods = delete_every_pod(mpi, launcher)
    code = proc.wait(timeout=60)
  finally:
    stop.set()
    watcher.join()
  gone = time.time() - deleted
  text = log_path.read_text(errors="replace")
  for name, took, exit_code, grace in pods:
    if exit_code == KILLED or took >= grace:
      raise RehearsalError(f"{name} was killed by the grace timeout ({took:.1f} s of {grace} s)")
  steps = {int(rank): int(step) if step else before for rank, step in PREEMPTED.findall(text)}
  if sorted(steps) != list(range(mpi.replicas * mpi.slots)) or len(set(steps.values())) != 1:
    raise RehearsalError(
      f"not every rank stopped at one step (rank: step {steps}):\n{text[-3000:]}"
    )
  if code == 0 or "Exit code: 75" not in text:
    raise RehearsalError(f"the ranks did not exit 75 (launcher exit {code}):\n{text[-3000:]}")
  (step,) = set(steps.values())
  to_checkpoint = None
  if step != before:
    if seen.get("step") != step:
      raise RehearsalError(f"stopped at step {step}, but the checkpoint on disk is {seen}")
    to_checkpoint = seen["at"] - deleted
  for name, *_ in pods:
    run(PODMAN + ["rm", "-f", name], check=False)  # the deleted pods are gone
  return Stop(step, to_checkpoint, gone, max(p[3] for p in pods))


def admit(mpi, attempt):
  """Kueue admits the job: the operator starts the workers, then the launcher."""
  mpi.start_pods()
  log_path = mpi.work / "logs" / f"launcher-{attempt}.log"
  proc, out = mpi.start_launcher(attempt, log_path)
  return proc, out, log_path, f"{PREFIX}-launcher-{attempt}"


def _resumed_at(watch, step):
  resumed, _ = watch.wait(RESUMED, 600)
  if int(resumed.group(1)) != step:
    raise RehearsalError(
      f"resumed at step {resumed.group(1)}, but the preemption stopped at {step}"
    )


def suspend_and_resume(mpi, model_dir, max_steps):
  """The queued job preempted in its first minute, mid-run and in evaluation; returns measurements."""
  measured = []
  # 1. Admitted; preempted at its first progress line, before any checkpoint.
  proc, out, log_path, launcher = admit(mpi, "queued-1")
  started = time.time()
  watch = LogWatcher(log_path, proc)
  first, seen = watch.wait(PROGRESS.pattern, 600)
  if latest_checkpoint_step(model_dir) is not None:
    raise RehearsalError("a checkpoint exists before the first preemption; nothing to prove")
  early = preempt(mpi, proc, launcher, log_path, model_dir)
  out.close()
  print(
    f"[cluster-test]    preempted {seen - started:.0f} s after the launcher started (first "
    f"progress line, step {first.group(1)}): every rank stopped at step {early.step}, "
    f"checkpoint on disk {early.to_checkpoint:.1f} s after the deletion, all pods gone in "
    f"{early.to_gone:.1f} s (grace {early.grace} s)",
    flush=True,
  )
  measured.append(
    ("kueue: first-minute preemption, SIGTERM -> checkpoint on disk", early.to_checkpoint)
  )

  # 2. Re-admitted: resumes at exactly that step; preempted again mid-run.
  recreated = time.time()
  proc, out, log_path, launcher = admit(mpi, "queued-2")
  watch = LogWatcher(log_path, proc)
  _resumed_at(watch, early.step)
  training_again = watch.wait(PROGRESS.pattern, 600)[1] - recreated
  watch.wait(PROGRESS.pattern, 600, accept=lambda m: int(m.group(1)) >= early.step + MID_RUN_STEPS)
  mid = preempt(mpi, proc, launcher, log_path, model_dir)
  out.close()
  print(
    f"[cluster-test]    re-created, training again in {training_again:.1f} s, resumed at step "
    f"{early.step}; suspended mid-run: every rank stopped at "
    f"step {mid.step}, checkpoint on disk {mid.to_checkpoint:.1f} s after the deletion, all "
    f"pods gone in {mid.to_gone:.1f} s (grace {mid.grace} s), nothing killed",
    flush=True,
  )
  measured += [
    ("kueue: suspend, SIGTERM -> checkpoint on disk", mid.to_checkpoint),
    ("kueue: suspend, SIGTERM -> every pod gone", mid.to_gone),
    ("kueue: pods re-created -> training again", training_again),
  ]

  # 3. Re-admitted: resumes there, trains to the end; preempted in the final evaluation.
  proc, out, log_path, launcher = admit(mpi, "queued-3")
  watch = LogWatcher(log_path, proc)
  _resumed_at(watch, mid.step)
  watch.wait(EVALUATING, 900)
  in_eval = preempt(mpi, proc, launcher, log_path, model_dir)
  out.close()
  print(
    f"[cluster-test]    resumed at step {mid.step}; preempted in the final evaluation: every "
    f"rank stopped at step {in_eval.step} and exited 75",
    flush=True,
  )

  # 4. Re-admitted: resumes at the end of training, evaluates and exports.
  proc, out, log_path, _ = admit(mpi, "queued-4")
  code = proc.wait(timeout=900)
  out.close()
  text = log_path.read_text(errors="replace")
  resumed = re.search(RESUMED, text)
  if code != 0 or not resumed or int(resumed.group(1)) != in_eval.step:
    raise RehearsalError(
      f"the last attempt exited {code}, resumed: {bool(resumed)}:\n{text[-3000:]}"
    )
  assert_trained(model_dir, max_steps, text, "queued MPIJob")
  return measured
