"""The evaluation input a run builds once and keeps in memory gives what a fresh chain gives (issue 18)."""

from trainers import config as config_lib
from trainers import distributed
from trainers import eval_input
from trainers import shards
from trainers import train


def _run(tfrecords, tmp_path, recipe="tiny"):
  config = config_lib.parse(
    "cifar10",
    [
      "--recipe",
      recipe,
      "--data-dir",
      str(tfrecords / "cifar10"),
      "--model-dir",
      str(tmp_path / "run"),
      "--batch-size",
      "16",
    ],
  )
  return train.Run(config, distributed.init())


def test_repeated_evaluations_equal_a_fresh_chain_and_reuse_one_input(tfrecords, tmp_path):
  run = _run(tfrecords, tmp_path)
  fresh = train.evaluate(run.eval_step, run.dataset("test", training=False))
  first, again = run.evaluate("test"), run.evaluate("test")
  assert first == fresh and again == fresh
  assert fresh["examples"] == run.metadata.splits["test"].num_examples
  assert run.eval_inputs.get("test") is run.eval_inputs.get("test")


def test_max_batches_reads_that_many_batches_every_time(tfrecords, tmp_path):
  run = _run(tfrecords, tmp_path)
  fresh = train.evaluate(run.eval_step, run.dataset("test", training=False), max_batches=2)
  assert run.evaluate("test", 2) == fresh == run.evaluate("test", 2)
  assert fresh["examples"] == 32
  # The whole split is a different input from its first two batches.
  assert run.evaluate("test")["examples"] > 32


def test_the_sample_test_split_fits_the_eval_cache_and_a_huge_one_would_not(tfrecords, monkeypatch):
  metadata = shards.load_metadata(str(tfrecords / "cifar10"))
  assert eval_input.cache_fits(metadata, "test", rank=0, size=1)
  monkeypatch.setattr(eval_input, "EVAL_CACHE_BYTES", 1000)
  assert not eval_input.cache_fits(metadata, "test", rank=0, size=1)
