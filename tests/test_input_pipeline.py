"""The trainers' input pipeline on shards written by the real Beam job.

Covers what the trainers rely on: each augmentation op gives the same pixels
eagerly and inside tf.data.map, streams are reproducible from the run seed,
ranks read disjoint parts that cover a split, eval pixels equal a hand
computation from the raw CIFAR-10 bytes, and bad data fails early with a
one-line message.
"""

import copy
import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf

from preprocess import augment
from preprocess import datasets
from preprocess import schema
from preprocess.datasets import cifar10
from tests.conftest import run_beam_job
from trainers import input_pipeline as ip
from trainers import shards

ROOT = pathlib.Path(__file__).resolve().parent.parent
CIFAR_TEST_BIN = "cifar10/cifar-10-batches-bin/test_batch.bin"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Sample CIFAR-10 and MNIST raw data, converted by the Beam job into 4 shards a split."""
  from preprocess import sample_data

  raw = tmp_path_factory.mktemp("raw")
  out = tmp_path_factory.mktemp("tfrecords")
  sample_data.generate(str(raw), names=("cifar10", "mnist"), seed=0)
  for dataset, validation in (("cifar10", 0), ("mnist", 500)):
    run_beam_job(dataset, raw, out, "--num-shards", 4, "--validation-size", validation)
  return {"raw": raw, "cifar10": out / "cifar10", "mnist": out / "mnist"}


@pytest.fixture(scope="module")
def cifar(data):
  return str(data["cifar10"]), shards.load_metadata(data["cifar10"])


@pytest.fixture
def cifar_copy(data, tmp_path):
  """A private copy of the CIFAR-10 output, for tests that damage it."""
  return pathlib.Path(shutil.copytree(data["cifar10"], tmp_path / "cifar10"))


def _read_all(dataset):
  """Concatenates every component of a finite dataset of batches into numpy arrays."""
  parts = list(zip(*[tuple(t.numpy() for t in batch) for batch in dataset]))
  return tuple(np.concatenate(p) for p in parts)


def _take(dataset, n):
  return _read_all(dataset.take(n))


# --- augmentation ops --------------------------------------------------------

STEPS = [
  {"op": "random_crop", "height": 24, "width": 24},
  {"op": "central_crop", "height": 24, "width": 24},
  {"op": "random_flip_left_right"},
  {"op": "random_brightness", "max_delta": 63.0},
  {"op": "random_contrast", "lower": 0.2, "upper": 1.8},
  {"op": "per_image_standardization"},
  {"op": "scale", "factor": 1.0 / 255.0},
]


def _image(seed=0, shape=(32, 32, 3)):
  return np.random.default_rng(seed).uniform(0, 255, size=shape).astype(np.float32)


def test_the_tests_cover_every_op():
  assert {s["op"] for s in STEPS} == set(augment.OPS)


@pytest.mark.parametrize("step", STEPS, ids=[s["op"] for s in STEPS])
def test_op_gives_the_same_pixels_eagerly_and_inside_dataset_map(step):
  images = np.stack([_image(i) for i in range(3)])
  seeds = np.array([[1, 2], [1, 3], [7, 2]], np.int64)
  eager = np.stack(
    [ip.apply_policy(tf.constant(x), [step], tf.constant(s)).numpy() for x, s in zip(images, seeds)]
  )
  mapped = tf.data.Dataset.from_tensor_slices((images, seeds)).map(
    lambda x, s: ip.apply_policy(x, [step], s), num_parallel_calls=2
  )
  np.testing.assert_array_equal(np.stack(list(mapped.as_numpy_iterator())), eager)
  assert eager.shape[1:] == augment.output_shape([step], (32, 32, 3))


@pytest.mark.parametrize(
  "step", [s for s in STEPS if augment.OPS[s["op"]].random], ids=lambda s: s["op"]
)
def test_random_op_is_a_function_of_its_seed(step):
  image = tf.constant(_image())
  first = ip.apply_policy(image, [step], tf.constant([5, 6], tf.int64)).numpy()
  again = ip.apply_policy(image, [step], tf.constant([5, 6], tf.int64)).numpy()
  np.testing.assert_array_equal(first, again)
  others = [
    ip.apply_policy(image, [step], tf.constant([5, s], tf.int64)).numpy() for s in range(7, 15)
  ]
  assert any(not np.array_equal(first, o) for o in others)


def test_ops_match_their_definitions():
  x = _image()
  seed = tf.constant([3, 4], tf.int64)
  apply = lambda step: ip.apply_policy(tf.constant(x), [step], seed).numpy()
  # A random crop is some 24x24 window of the input.
  crop = apply(STEPS[0])
  assert any(np.array_equal(crop, x[i : i + 24, j : j + 24]) for i in range(9) for j in range(9))
  np.testing.assert_array_equal(apply(STEPS[1]), x[4:28, 4:28])
  flipped = apply(STEPS[2])
  assert np.array_equal(flipped, x) or np.array_equal(flipped, x[:, ::-1])
  delta = apply(STEPS[3]) - x  # one offset for all pixels, within max_delta
  assert np.ptp(delta) < 1e-3 and abs(delta.mean()) <= 63.0
  mean = x.mean(axis=(0, 1))  # contrast scales each channel around its mean
  factor = (apply(STEPS[4]) - mean) / (x - mean)
  assert np.ptp(factor) < 1e-3 and 0.2 <= factor.mean() <= 1.8
  standardized = apply(STEPS[5])
  assert abs(standardized.mean()) < 1e-5 and abs(standardized.std() - 1) < 1e-4
  np.testing.assert_allclose(apply(STEPS[6]), x / 255.0, rtol=1e-6)


def test_bad_policies_fail_loudly():
  with pytest.raises(ip.InputError, match="'random_flip_left_right' is random and needs a seed"):
    ip.apply_policy(tf.constant(_image()), [{"op": "random_flip_left_right"}])
  with pytest.raises(ip.InputError, match="unknown augmentation op 'blur'"):
    ip.apply_policy(tf.constant(_image()), [{"op": "blur"}])
  with pytest.raises(ip.InputError, match="random op 'random_crop'"):
    ip.serving_preprocess(tf.zeros([1, 32, 32, 3], tf.uint8), [STEPS[0]])


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_serving_preprocess_equals_the_eval_policy_per_image(dataset):
  steps = datasets.get(dataset).policy()["eval"]
  shape = {"cifar10": (32, 32, 3), "mnist": (28, 28, 1)}[dataset]
  raw = np.random.default_rng(1).integers(0, 256, size=(5,) + shape, dtype=np.uint8)
  raw[0] = 7  # a flat image: standardization must not divide by zero
  served = ip.serving_preprocess(tf.constant(raw), steps).numpy()
  for image, out in zip(raw, served):
    expected = ip.apply_policy(tf.constant(image, tf.float32), steps).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  assert served.shape == (5,) + augment.output_shape(steps, shape)
  assert np.isfinite(served).all()


# --- streams -----------------------------------------------------------------


def test_cifar10_train_and_eval_shapes_and_types(cifar):
  data_dir, meta = cifar
  train = ip.make_dataset(
    data_dir,
    meta,
    "train",
    rank=0,
    size=1,
    batch_size=64,
    training=True,
    seed=0,
    image_shape=(24, 24, 3),
  )
  assert train.element_spec[0].shape == (64, 24, 24, 3)  # static: drop_remainder
  assert train.element_spec[0].dtype == tf.float32 and train.element_spec[1].dtype == tf.int32
  # 2,500 records, batch 64: the batches straddling epoch ends are full too.
  for images, labels in train.take(45):
    assert images.shape == (64, 24, 24, 3) and labels.shape == (64,)
  assert abs(float(tf.reduce_mean(images))) < 1e-3  # standardized per image
  assert set(labels.numpy()) <= set(range(10))
  test = ip.make_dataset(
    data_dir, meta, "test", rank=0, size=1, batch_size=64, training=False, seed=0
  )
  sizes = [int(labels.shape[0]) for _, labels in test]
  assert sizes == [64] * 7 + [500 - 7 * 64]  # one pass, short last batch kept


def test_eval_images_equal_a_hand_computation_from_the_raw_bytes(data, cifar):
  data_dir, meta = cifar
  images, labels, ids = _read_all(
    ip.make_dataset(
      data_dir, meta, "test", rank=0, size=1, batch_size=100, training=False, seed=0, with_ids=True
    )
  )
  raw = np.frombuffer((data["raw"] / CIFAR_TEST_BIN).read_bytes(), np.uint8)
  raw = raw.reshape(-1, cifar10.RECORD_BYTES)
  for image, label, source_id in zip(images, labels, ids):
    index = int(source_id.decode().rsplit(":", 1)[1])
    assert source_id.decode() == f"cifar-10-batches-bin/test_batch.bin:{index}"
    assert label == raw[index, 0]
    pixels = raw[index, 1:].reshape(3, 32, 32).transpose(1, 2, 0).astype(np.float64)
    crop = pixels[4:28, 4:28]  # the central 24x24
    expected = (crop - crop.mean()) / max(crop.std(), 1 / np.sqrt(crop.size))
    np.testing.assert_allclose(image, expected, atol=2e-5)
  assert len(ids) == meta.splits["test"].num_examples


def test_mnist_images_are_28x28x1_in_unit_range(data):
  meta = shards.load_metadata(data["mnist"])
  assert meta.splits["validation"].num_examples == 500
  for split, training in (("train", True), ("validation", False)):
    images, labels = next(
      iter(
        ip.make_dataset(
          str(data["mnist"]),
          meta,
          split,
          rank=0,
          size=1,
          batch_size=50,
          training=training,
          seed=0,
          image_shape=(28, 28, 1),
        )
      )
    )
    assert images.shape == (50, 28, 28, 1) and images.dtype == tf.float32
    pixels = images.numpy()
    assert pixels.min() >= 0 and pixels.max() <= 1 and pixels.max() > 0.5
    np.testing.assert_allclose(pixels * 255, np.round(pixels * 255), atol=1e-3)  # scaled bytes
    assert labels.dtype == tf.int32


def test_same_seed_gives_the_same_batches_and_another_seed_others(cifar):
  data_dir, meta = cifar
  make = lambda seed: ip.make_dataset(
    data_dir, meta, "train", rank=0, size=1, batch_size=32, training=True, seed=seed, with_ids=True
  )
  first, again, other = _take(make(0), 5), _take(make(0), 5), _take(make(1), 5)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[2], other[2])  # another record order


def test_each_epoch_is_a_fresh_permutation_with_fresh_augmentation(cifar):
  data_dir, meta = cifar
  # The 500 test records, trained on: batches 0-9 are epoch 0, 10-19 epoch 1.
  images, _, ids = _take(
    ip.make_dataset(
      data_dir, meta, "test", rank=0, size=1, batch_size=50, training=True, seed=0, with_ids=True
    ),
    20,
  )
  epochs = [(images[:500], ids[:500]), (images[500:], ids[500:])]
  everything = set(
    _read_all(
      ip.make_dataset(
        data_dir,
        meta,
        "test",
        rank=0,
        size=1,
        batch_size=100,
        training=False,
        seed=0,
        with_ids=True,
      )
    )[2]
  )
  for _, epoch_ids in epochs:
    assert len(set(epoch_ids)) == 500 and set(epoch_ids) == everything
  assert not np.array_equal(epochs[0][1], epochs[1][1])  # reshuffled
  by_id = [dict(zip(epoch_ids, epoch_images)) for epoch_images, epoch_ids in epochs]
  assert all(not np.allclose(by_id[0][i], by_id[1][i]) for i in everything)
  # A resumed run can start at epoch 1 and get exactly what epoch 1 was.
  resumed = _take(
    ip.make_dataset(
      data_dir,
      meta,
      "test",
      rank=0,
      size=1,
      batch_size=50,
      training=True,
      seed=0,
      with_ids=True,
      first_epoch=1,
    ),
    10,
  )
  np.testing.assert_array_equal(resumed[2], ids[500:])
  np.testing.assert_array_equal(resumed[0], images[500:])


def test_augmentation_depends_only_on_run_seed_example_and_epoch(data, cifar):
  """Recomputes training images by hand; the rank that reads them does not matter."""
  data_dir, meta = cifar
  steps = meta.augmentation["train"]
  raw = np.frombuffer((data["raw"] / CIFAR_TEST_BIN).read_bytes(), np.uint8)
  raw = raw.reshape(-1, cifar10.RECORD_BYTES)
  from preprocess import schema

  for rank, size in ((0, 1), (1, 2)):
    images, _, ids = _take(
      ip.make_dataset(
        data_dir,
        meta,
        "test",
        rank=rank,
        size=size,
        batch_size=8,
        training=True,
        seed=42,
        with_ids=True,
      ),
      1,
    )
    for image, source_id in zip(images, ids):
      index = int(source_id.decode().rsplit(":", 1)[1])
      pixels = raw[index, 1:].reshape(3, 32, 32).transpose(1, 2, 0).astype(np.float32)
      seed = ip.example_seed(42, schema.augment_seed(source_id.decode()), 0)
      np.testing.assert_allclose(
        image, ip.apply_policy(tf.constant(pixels), steps, seed), atol=1e-5
      )


# --- sharding ----------------------------------------------------------------


@pytest.mark.parametrize("size, by_records", [(2, False), (3, False), (5, True)])
def test_ranks_eval_streams_are_disjoint_and_cover_the_split(cifar, size, by_records):
  data_dir, meta = cifar
  everything = _read_all(
    ip.make_dataset(
      data_dir, meta, "test", rank=0, size=1, batch_size=64, training=False, seed=0, with_ids=True
    )
  )[2]
  assert len(set(everything)) == meta.splits["test"].num_examples == 500
  seen = []
  for rank in range(size):
    plan = ip.plan_shards(meta, "test", rank=rank, size=size, training=False)
    assert plan.by_records == by_records
    ids = _read_all(
      ip.make_dataset(
        data_dir,
        meta,
        "test",
        rank=rank,
        size=size,
        batch_size=64,
        training=False,
        seed=0,
        with_ids=True,
      )
    )[2]
    assert len(ids) == plan.num_examples
    seen.append(set(ids))
  assert sum(len(s) for s in seen) == 500 and set.union(*seen) == set(everything)


@pytest.mark.parametrize("size, by_records", [(2, False), (3, True)])
def test_ranks_first_training_epochs_partition_the_split(cifar, size, by_records):
  """Training shards before shuffling. 4 files over 3 ranks would be 250/125/125
  records, so training deals records out instead (equal shares)."""
  data_dir, meta = cifar
  seen = []
  for rank in range(size):
    plan = ip.plan_shards(meta, "test", rank=rank, size=size, training=True)
    assert plan.by_records == by_records
    dataset = ip.make_dataset(
      data_dir,
      meta,
      "test",
      rank=rank,
      size=size,
      batch_size=1,
      training=True,
      seed=0,
      with_ids=True,
    )
    ids = _take(dataset, plan.num_examples)[2]
    assert len(set(ids)) == plan.num_examples
    seen.append(set(ids))
  assert max(len(s) for s in seen) - min(len(s) for s in seen) <= 1
  assert sum(len(s) for s in seen) == 500 and len(set.union(*seen)) == 500


def test_a_rank_without_records_fails_loudly(cifar):
  data_dir, meta = cifar
  small = copy.deepcopy(meta)
  small.splits["test"].shards = [schema.ShardInfo("test-00000-of-00004.tfrecord", 3)]
  with pytest.raises(ip.InputError, match="rank 3 of 4 gets no records"):
    ip.make_dataset(data_dir, small, "test", rank=3, size=4, batch_size=1, training=True, seed=0)


# --- checks ------------------------------------------------------------------


def test_image_shape_that_the_policy_does_not_produce_fails(cifar):
  data_dir, meta = cifar
  with pytest.raises(
    ip.InputError, match="model expects 28x28x1 but the data's train policy produces 24x24x3"
  ):
    ip.make_dataset(
      data_dir,
      meta,
      "train",
      rank=0,
      size=1,
      batch_size=8,
      training=True,
      seed=0,
      image_shape=(28, 28, 1),
    )
  with pytest.raises(ip.InputError, match="model expects 32x32x3 but the data's eval policy"):
    ip.make_dataset(
      data_dir,
      meta,
      "test",
      rank=0,
      size=1,
      batch_size=8,
      training=False,
      seed=0,
      image_shape=(32, 32, 3),
    )
  ip.make_dataset(
    data_dir,
    meta,
    "test",
    rank=0,
    size=1,
    batch_size=8,
    training=False,
    seed=0,
    image_shape=(None, None, 3),
  )


def test_steps_per_epoch(cifar):
  _, meta = cifar
  assert ip.steps_per_epoch(meta, "train", 128) == 2500 // 128
  assert ip.steps_per_epoch(meta, "test", 500) == 1
  with pytest.raises(ip.InputError, match="'test' has 500 examples, fewer than one global batch"):
    ip.steps_per_epoch(meta, "test", 501)
  with pytest.raises(ip.InputError, match="no split 'validation'"):
    ip.steps_per_epoch(meta, "validation", 1)


def _error(data_dir):
  with pytest.raises(ip.InputError) as info:
    shards.load_metadata(data_dir)
  message = str(info.value)
  assert "\n" not in message
  return message


def _edit_metadata(data_dir, edit):
  path = data_dir / "metadata.json"
  meta = json.loads(path.read_text())
  edit(meta)
  path.write_text(json.dumps(meta))


def test_missing_metadata_json(cifar_copy):
  (cifar_copy / "metadata.json").unlink()
  assert _error(cifar_copy) == (
    f"{cifar_copy}/metadata.json: not found: run make preprocess (the Beam job writes it last; "
    "without it the shards are incomplete)"
  )


def test_deleted_shard(cifar_copy):
  (cifar_copy / "train-00002-of-00004.tfrecord").unlink()
  assert _error(cifar_copy) == (
    f"{cifar_copy}/train-00002-of-00004.tfrecord: listed in "
    "metadata.json (split 'train') but missing"
  )


def test_shard_with_fewer_records_than_metadata_says(cifar_copy):
  shard = cifar_copy / "test-00001-of-00004.tfrecord"
  kept = list(tf.data.TFRecordDataset(str(shard)).take(100).as_numpy_iterator())
  with tf.io.TFRecordWriter(str(shard)) as writer:
    for record in kept:
      writer.write(record)
  assert _error(cifar_copy) == f"{shard}: holds 100 records, but metadata.json says 125"


def test_shard_cut_inside_a_record(cifar_copy):
  shard = cifar_copy / "test-00003-of-00004.tfrecord"
  with open(shard, "r+b") as f:
    f.truncate(shard.stat().st_size - 100)
  message = _error(cifar_copy)
  assert message.startswith(f"{shard}: record 124 needs 100 more bytes") and "truncated" in message


def test_tampered_counts_in_metadata_json(cifar_copy):
  def shard_only(meta):
    meta["splits"]["train"]["shards"][1]["num_examples"] = 600

  _edit_metadata(cifar_copy, shard_only)
  assert _error(cifar_copy) == (
    f"{cifar_copy}/metadata.json: the shards of split 'train' add up "
    "to 2475 records, but its num_examples is 2500"
  )

  def consistently(meta):  # sums agree, so only counting the records catches it
    meta["splits"]["train"]["num_examples"] = 2475
    meta["splits"]["train"]["label_counts"][0] -= 25

  _edit_metadata(cifar_copy, consistently)
  assert _error(cifar_copy) == (
    f"{cifar_copy}/train-00001-of-00004.tfrecord: holds 625 records, but metadata.json says 600"
  )


def test_unknown_format_version(cifar_copy):
  _edit_metadata(cifar_copy, lambda meta: meta.update(format_version=3))
  assert "format_version 3, but this reader knows 2" in _error(cifar_copy)
