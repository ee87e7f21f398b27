"""Issue 11's speed features, for correctness (timings are in `make bench`, not here).

K steps per tf.function call give the weights of K single steps; the precision
policies and XLA train (the loss goes down) and keep ranks bitwise identical
under a real `horovodrun -np 2`.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT
from tests.conftest import run_trainer
from tests.test_distributed import _load


def _weights(model_dir):
  reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
  # Every variable: model, optimizer (iterations and slots), EMA shadows.
  names = sorted(
    n
    for n in reader.get_variable_to_shape_map()
    if n.endswith("VARIABLE_VALUE") and not n.startswith("save_counter")
  )
  return {n: reader.get_tensor(n) for n in names}


def _flags(data_dir, model_dir, *extra):
  return [
    "--recipe",
    "cifar10_tutorial",
    "--data-dir",
    data_dir,
    "--model-dir",
    model_dir,
    "--max-steps",
    12,
    "--batch-size",
    16,
    "--mode",
    "train",
    "--no-export",
    "--eval-every",
    0,
    "--checkpoint-every",
    12,
    "--summary-every",
    0,
    "--histogram-every",
    0,
    "--log-every",
    1,
    *extra,
  ]


def test_k_steps_per_call_give_the_weights_of_k_single_steps(tfrecords, tmp_path):
  runs = {}
  for k in (1, 5):
    out = tmp_path / f"k{k}"
    result = run_trainer("cifar10", _flags(tfrecords / "cifar10", out, "--steps-per-call", k))
    assert f"{k} steps per call" in result.stdout
    runs[k] = _weights(out)
    # Calls end on the grid of k (log every 1 rounds up to 5), the first after one step
    # (its line the sign of life), the last at max_steps.
    logged = [
      int(l.split()[1].split("/")[0])
      for l in result.stdout.splitlines()
      if l.startswith("step ") and "/12 " in l
    ]
    assert logged == ([1, 5, 10, 12] if k == 5 else list(range(1, 13)))
  assert runs[1].keys() == runs[5].keys() and runs[1]
  for name in runs[1]:
    np.testing.assert_allclose(runs[1][name], runs[5][name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_an_explicit_k_rounds_the_cadences_up_and_says_so(tfrecords, tmp_path):
  result = run_trainer(
    "cifar10",
    _flags(tfrecords / "cifar10", tmp_path / "r", "--steps-per-call", 5, "--summary-every", 3),
  )
  assert "cadences rounded to multiples of 5: log every 5, summary every 5" in result.stdout


@pytest.mark.parametrize(
  "extra", [["--precision", "mixed_bfloat16"], ["--precision", "mixed_float16"], ["--xla"]]
)
def test_precision_and_xla_train(tfrecords, tmp_path, extra):
  flags = _flags(tfrecords / "cifar10", tmp_path / "r", *extra)
  flags[flags.index("--max-steps") + 1] = 40
  flags[flags.index("--checkpoint-every") + 1] = 40
  result = run_trainer("cifar10", flags + ["--recipe", "tiny", "--batch-size", 32])
  losses = [
    float(l.split(" loss ")[1].split()[0])
    for l in result.stdout.splitlines()
    if l.startswith("step ") and " loss " in l
  ]
  assert len(losses) == 40 and all(np.isfinite(losses))
  assert np.mean(losses[-10:]) < np.mean(losses[:10])


@pytest.mark.slow
@pytest.mark.parametrize(
  "extra",
  [
    ["--steps-per-call", "3", "--precision", "mixed_bfloat16"],
    ["--steps-per-call", "3", "--precision", "mixed_float16", "--xla"],
  ],
)
def test_ranks_stay_bitwise_identical_with_k_steps_precision_and_xla(
  horovod, tfrecords, tmp_path, extra
):
  horovod(
    2,
    [
      ROOT / "tests/workers/train_sync.py",
      "--out",
      tmp_path,
      "--dataset",
      "cifar10",
      "--recipe",
      "cifar10_tutorial",
      "--data-dir",
      tfrecords / "cifar10",
      "--model-dir",
      tmp_path / "run",
      "--max-steps",
      7,
      "--batch-size",
      8,
      "--eval-every",
      0,
      *extra,
    ],
  )
  d0, init0, final0 = _load(tmp_path / "rank0.npz")
  d1, _, final1 = _load(tmp_path / "rank1.npz")
  assert int(d0["step"]) == int(d1["step"]) == 7
  assert len(final0) == len(final1)
  for a, b in zip(final0, final1):
    assert np.array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(init0, final0[: len(init0)]))
