"""The trainers under real `horovodrun -np 2` jobs on CPU: sync, equivalence, sharding, faults."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import psutil
import pytest
import tensorflow as tf

from bench.elastic import trainer_processes
from tests.conftest import BIN
from tests.conftest import ROOT
from tests.conftest import run_trainer
from tests.conftest import wait_for_checkpoint

pytestmark = pytest.mark.slow


def _load(path):
  data = np.load(path)
  initial = [
    data[k]
    for k in sorted(
      (k for k in data.files if k.startswith("initial_")), key=lambda k: int(k.split("_")[1])
    )
  ]
  final = [
    data[k]
    for k in sorted(
      (k for k in data.files if k.startswith("final_")), key=lambda k: int(k.split("_")[1])
    )
  ]
  return data, initial, final


@pytest.mark.parametrize(
  "dataset, model", [("cifar10", "cifar10_tutorial"), ("mnist", "mnist_bn_dropout")]
)
def test_ranks_hold_bitwise_identical_state_after_training(
  horovod, tfrecords, tmp_path, dataset, model
):
  horovod(
    2,
    [
      ROOT / "tests/workers/train_sync.py",
      "--out",
      tmp_path,
      "--dataset",
      dataset,
      "--recipe",
      model,
      "--data-dir",
      tfrecords / dataset,
      "--model-dir",
      tmp_path / "run",
      "--max-steps",
      6,
      "--batch-size",
      8,
      "--eval-every",
      0,
      "--early-stopping-patience",
      0,
    ],
  )
  d0, init0, final0 = _load(tmp_path / "rank0.npz")
  d1, init1, final1 = _load(tmp_path / "rank1.npz")
  assert int(d0["size"]) == 2 and int(d0["step"]) == int(d1["step"]) == 6
  # Ranks were seeded differently, so they only agree because of the broadcast ...
  assert any(not np.array_equal(a, b) for a, b in zip(init0, init1))
  # ... and stay identical, bit for bit, through six steps on different data:
  # weights, batch-norm statistics, optimizer slots and EMA shadows alike.
  assert len(final0) == len(final1)
  for a, b in zip(final0, final1):
    assert np.array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(init0, final0[: len(init0)]))


def test_ranks_read_disjoint_shards_that_cover_the_split(horovod, tfrecords, tmp_path):
  horovod(
    2,
    [
      ROOT / "tests/workers/train_sync.py",
      "--out",
      tmp_path,
      "--dataset",
      "cifar10",
      "--recipe",
      "tiny",
      "--data-dir",
      tfrecords / "cifar10",
      "--model-dir",
      tmp_path / "run",
      "--max-steps",
      1,
    ],
  )
  ids0 = set(np.load(tmp_path / "rank0.npz")["ids"].tolist())
  ids1 = set(np.load(tmp_path / "rank1.npz")["ids"].tolist())
  meta = json.loads((tfrecords / "cifar10" / "metadata.json").read_text())
  assert ids0 and ids1 and not ids0 & ids1
  assert len(ids0 | ids1) == meta["splits"]["test"]["num_examples"]


def test_two_workers_of_batch_b_equal_one_worker_of_batch_2b(horovod, tmp_path):
  horovod(
    2, [ROOT / "tests/workers/equivalence.py", "--out", tmp_path / "np2.npz", "--global-batch", 16]
  )
  horovod(
    1, [ROOT / "tests/workers/equivalence.py", "--out", tmp_path / "np1.npz", "--global-batch", 16]
  )
  two, one = np.load(tmp_path / "np2.npz"), np.load(tmp_path / "np1.npz")
  for k in one.files:
    np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-6)


MODELS = [
  ("cifar10", "cifar10_tutorial"),
  ("cifar10", "cifar10_cookbook"),
  ("mnist", "mnist_basic"),
  ("mnist", "mnist_bn_dropout"),
  ("mnist", "mnist_resnet"),
  ("catdog", "catdog_lenet5"),
]


@pytest.mark.parametrize("dataset, model", MODELS, ids=[f"{d}-{m}" for d, m in MODELS])
def test_every_trainer_runs_under_horovodrun(tfrecords, tmp_path, dataset, model):
  result = run_trainer(
    dataset,
    [
      "--recipe",
      model,
      "--data-dir",
      tfrecords / dataset,
      "--model-dir",
      tmp_path,
      "--max-steps",
      3,
      "--batch-size",
      8,
      "--log-every",
      1,
      "--eval-every",
      2,
    ],
    np_=2,
  )
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["workers"] == 2 and metrics["trained_steps"] == 3
  meta = json.loads((tfrecords / dataset / "metadata.json").read_text())
  assert metrics["examples"] == meta["splits"]["test"]["num_examples"]
  assert "on 2 worker(s)" in result.stdout and "(16 global)" in result.stdout
  # Only rank 0 logs progress: one line per step, not two.
  assert result.stdout.count("step 2/3 ") == 1
  assert json.loads((tmp_path / "config.json").read_text())["workers"] == 2
  assert (tmp_path / "export" / "saved_model.pb").exists()


def test_a_dead_worker_ends_the_job_and_a_restart_resumes(tfrecords, tmp_path):
  flags = [
    "--recipe",
    "tiny",
    "--data-dir",
    tfrecords / "cifar10",
    "--model-dir",
    tmp_path,
    "--checkpoint-every",
    5,
    "--log-every",
    1000,
    "--no-export",
  ]
  cmd = [
    str(BIN / "horovodrun"),
    "-np",
    "2",
    "-H",
    "localhost:2",
    str(ROOT / "trainers/cifar10.py"),
  ]
  env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", TF_CPP_MIN_LOG_LEVEL="2")
  launcher = subprocess.Popen(
    cmd + [str(f) for f in flags] + ["--max-steps", "1000000"],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  wait_for_checkpoint(tmp_path, 10)
  ranks = {rank: psutil.Process(pid) for rank, (pid, _) in trainer_processes(launcher.pid).items()}
  assert set(ranks) == {0, 1}, ranks
  ranks[1].send_signal(signal.SIGKILL)
  killed = time.time()
  try:
    output, _ = launcher.communicate(timeout=60)
  except subprocess.TimeoutExpired:
    launcher.kill()
    pytest.fail("horovodrun still running 60 s after a worker died")
  assert launcher.returncode != 0
  assert time.time() - killed < 60
  assert "exit" in output.lower() or "fail" in output.lower()
  for p in ranks.values():
    assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
  saved = int(tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).rsplit("-", 1)[1])
  result = run_trainer("cifar10", flags + ["--max-steps", saved + 5], np_=2)
  assert f"at step {saved}" in result.stdout
  assert json.loads((tmp_path / "metrics.json").read_text())["step"] == saved + 5
