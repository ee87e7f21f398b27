"""Preemption and exact resume (issue 17): stopped at any step, a run goes on as if it had not been.

Real runs of trainers/cifar10.py on the tiny recipe and the sample data, alone
and under `horovodrun -np 2`: SIGTERM to one process (or to horovodrun), every
rank stops at the same step, the chief's checkpoint holds that step, every
process says so and the job exits non-zero; the rerun resumes there and ends
with weights equal bitwise to those of an uninterrupted run (--deterministic).
The input stream is checked on its own too: started at any position, it is the
uninterrupted stream from there, for the in-memory and the streaming chain.
"""

import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from bench.elastic import trainer_processes
from tests.conftest import BIN
from tests.conftest import ROOT
from tests.conftest import run_trainer
from trainers import input_pipeline as ip
from trainers import preemption
from trainers import shards

MAX_STEPS = 120
FLAGS = [
  "--mode",
  "train",
  "--max-steps",
  MAX_STEPS,
  "--steps-per-call",
  5,
  "--log-every",
  5,
  "--eval-every",
  0,
  "--summary-every",
  0,
  "--histogram-every",
  0,
  "--no-export",
  "--deterministic",
]


# The dropout recipe: each rank draws its own masks, which a resumed run must continue.
DROPOUT = ["--recipe", "mnist_bn_dropout", "--batch-size", 16, "--early-stopping-patience", 0]


def _flags(tfrecords, model_dir, dataset="cifar10", recipe=("--recipe", "tiny")):
  return FLAGS + list(recipe) + ["--data-dir", tfrecords / dataset, "--model-dir", model_dir]


def _start(np_, flags, log, dataset="cifar10"):
  """Starts the trainer as users do (alone, or under horovodrun); output goes to `log`."""
  script = str(ROOT / "trainers" / f"{dataset}.py")
  args = [str(f) for f in flags]
  cmd = [script] + args
  if np_ > 1:
    cmd = [str(BIN / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}"] + cmd
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
  out = open(log, "w")  # noqa: SIM115 (closed by _finish)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
  proc.log, proc.out = log, out
  return proc


def _wait_for(proc, pattern, timeout=300):
  """Waits until the job's output matches `pattern`; fails the test if it exits first."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    text = open(proc.log).read()
    if re.search(pattern, text):
      return text
    if proc.poll() is not None:
      pytest.fail(f"the job exited {proc.returncode} before {pattern!r}:\n{text[-4000:]}")
    time.sleep(0.1)
  pytest.fail(f"no {pattern!r} after {timeout} s:\n{open(proc.log).read()[-4000:]}")


def _finish(proc, timeout=300):
  proc.wait(timeout=timeout)
  proc.out.close()
  return proc.returncode, open(proc.log).read()


def _rank_pid(proc, rank):
  """The pid of the trainer process of `rank` under horovodrun (HOROVOD_RANK in its env)."""
  deadline = time.time() + 60
  while time.time() < deadline:
    found = trainer_processes(proc.pid).get(rank)
    if found:
      return found[0]
    time.sleep(0.2)
  pytest.fail(f"no process of rank {rank} under horovodrun")


def _checkpoint(model_dir):
  """{variable: value} of the latest checkpoint (without the save counter, which counts saves)."""
  path = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
  reader = tf.train.load_checkpoint(path)
  return int(path.rsplit("-", 1)[1]), {
    name: reader.get_tensor(name)
    for name, _ in tf.train.list_variables(path)
    if not name.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))
  }


def _preempt(flags, model_dir, np_, target, dataset="cifar10"):
  """Runs a job and SIGTERMs `target` ("rank N" or "launcher") at step 40; returns (step, output)."""
  proc = _start(np_, flags, model_dir.parent / f"{model_dir.name}.log", dataset)
  _wait_for(proc, rf"step 40/{MAX_STEPS}")
  pid = proc.pid if target == "launcher" else _rank_pid(proc, int(target.split()[1]))
  os.kill(pid, signal.SIGTERM)
  code, output = _finish(proc)
  stops = re.findall(r"preempted at step (\d+); checkpoint written", output)
  assert code != 0, output[-3000:]
  assert len(stops) == np_ and len(set(stops)) == 1, output[-3000:]  # every process, one step
  step = int(stops[0])
  assert 40 <= step < MAX_STEPS
  assert _checkpoint(model_dir)[0] == step  # the chief's checkpoint is of that step
  return step, output


@pytest.mark.parametrize(
  "np_, dataset, recipe",
  [(1, "cifar10", "tiny"), (2, "cifar10", "tiny"), (2, "mnist", "dropout")],
)
def test_a_run_preempted_and_resumed_ends_bitwise_equal_to_an_uninterrupted_one(
  tfrecords, tmp_path, np_, dataset, recipe
):
  """SIGTERM to one process (rank 1 of 2): the rerun resumes at the step and ends bitwise equal."""
  whole, cut = tmp_path / "whole", tmp_path / "cut"
  recipe = DROPOUT if recipe == "dropout" else ("--recipe", recipe)
  run_trainer(dataset, _flags(tfrecords, whole, dataset, recipe), np_=np_)
  target = "rank 1" if np_ > 1 else "launcher"
  step, _ = _preempt(_flags(tfrecords, cut, dataset, recipe), cut, np_, target, dataset)
  resumed = run_trainer(dataset, _flags(tfrecords, cut, dataset, recipe), np_=np_)
  assert re.search(rf"resumed from \S+ckpt-{step} at step {step}\b", resumed.stdout)
  assert f"trained {MAX_STEPS - step} steps" in resumed.stdout
  (end_whole, expected), (end_cut, got) = _checkpoint(whole), _checkpoint(cut)
  assert end_whole == end_cut == MAX_STEPS
  assert "input_position/.ATTRIBUTES/VARIABLE_VALUE" in got
  assert expected.keys() == got.keys()
  differ = [name for name in expected if not np.array_equal(expected[name], got[name])]
  assert not differ, f"differ after resuming at step {step}: {differ}"


def test_a_lone_process_exits_with_the_retry_code(tfrecords, tmp_path):
  """Alone, the trainer's own exit code is EX_TEMPFAIL (75), what a Job's retry policy sees."""
  proc = _start(1, _flags(tfrecords, tmp_path / "run"), tmp_path / "run.log")
  _wait_for(proc, rf"step 20/{MAX_STEPS}")
  proc.send_signal(signal.SIGINT)  # Ctrl-C stops the same way
  code, output = _finish(proc)
  assert code == preemption.EXIT_PREEMPTED, output[-3000:]
  assert "received SIGINT" in output and "Traceback" not in output


def test_sigterm_to_horovodrun_stops_every_rank_at_one_step_with_a_checkpoint(tfrecords, tmp_path):
  """horovodrun forwards SIGTERM to every worker; they agree on a step, rank 0 saves it."""
  step, output = _preempt(_flags(tfrecords, tmp_path / "run"), tmp_path / "run", 2, "launcher")
  assert "Traceback" not in output.split("received SIGTERM")[0]


@pytest.mark.parametrize("cache", [True, False])
def test_the_stream_started_at_any_position_is_the_uninterrupted_stream_from_there(
  tfrecords, cache
):
  """Mid-epoch and across epochs, in memory and streamed: the same examples, order and pixels."""
  data_dir = str(tfrecords / "cifar10")
  meta = shards.load_metadata(data_dir)

  def stream(position, batches):
    dataset = ip.make_dataset(
      data_dir,
      meta,
      "train",
      rank=1,
      size=2,
      batch_size=25,
      training=True,
      seed=3,
      with_ids=True,
      cache=cache,
      position=position,
    )
    parts = list(zip(*[tuple(t.numpy() for t in b) for b in dataset.take(batches)]))
    return [np.concatenate(p) for p in parts]

  per_rank = ip.plan_shards(meta, "train", rank=1, size=2, training=True).num_examples
  whole = stream(0, (2 * per_rank) // 25 + 4)
  for position in (25 * 7, per_rank + 25 * 3):  # in epoch 0, and in epoch 1
    part = stream(position, 4)
    for expected, got in zip(whole, part):
      np.testing.assert_array_equal(got, expected[position : position + 100])


def test_a_checkpoint_written_before_the_input_position_resumes_at_step_times_batch(tmp_path):
  """Older checkpoints lack the position (and seed states): they load, the position follows the step."""
  from trainers import distributed
  from trainers import state

  ctx = distributed.Context(rank=0, size=1, local_rank=0)
  step = tf.Variable(7, dtype=tf.int64)
  tf.train.Checkpoint(step=step).save(str(tmp_path / "checkpoints" / "ckpt"))
  position = preemption.InputPosition()
  checkpoints = state.Checkpoints(
    str(tmp_path), ctx, 1, step=step, input_position=position.variable
  )
  step.assign(0)
  assert checkpoints.restore("latest")
  position.resolve(int(step.numpy()), global_batch=64)
  assert int(step.numpy()) == 7 and position.per_rank(2) == 7 * 64 // 2
  # A checkpoint that has it restores it as saved.
  position.advance(10)
  checkpoints.save(8)
  position.variable.assign(-1)
  checkpoints.restore("latest")
  assert int(position.variable.numpy()) == 7 * 64 + 10
