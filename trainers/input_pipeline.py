"""The trainers' input: sharded TFRecords + metadata.json -> batches of (image, label).

Sits between the Beam job (pipeline/build_tfrecords.py writes the shards and,
last, `metadata.json`) and the training loop (trainers/train.py). It trusts
only `metadata.json`: `load_metadata` checks that every shard it lists exists
and holds the records it claims, before any step runs. `make_dataset` reads
this worker's part of a split, decodes the images (schema in
preprocess/schema.py) and applies the split's augmentation policy as written
into `metadata.json` (preprocess/augment.py), with stateless random ops seeded
from the example, the epoch and the run seed, so a run seed always reproduces
the same stream. The exported SavedModel runs the eval policy through
`serving_preprocess`, so serving sees exactly what evaluation saw. The
metadata is the typed `preprocess.schema.Metadata`; the ops come from the
one table in preprocess/augment.py; shards are counted by preprocess/schema.py.

Horovod is not imported here: the rank and the number of workers come in as
plain ints (trainers/distributed.py owns Horovod).
"""

import collections

import numpy as np
import tensorflow as tf

from preprocess import augment
from preprocess import schema
from trainers.shards import InputError
from trainers.shards import format_shape
from trainers.shards import join

METADATA = schema.METADATA_FILE

# Files read at once while training. Fixed rather than AUTOTUNE because the
# interleaved order depends on it, and the stream must not depend on the core count.
_INTERLEAVE_FILES = 8
_DEFAULT_SHUFFLE_BUFFER = 10_000
# File sharding gives each rank whole files. When the ranks' shares differ by
# more than this while training, the small shares would be repeated more often
# (over-weighting their files), so records are dealt out one by one instead.
_MAX_TRAIN_IMBALANCE = 0.05
# Streams of random numbers drawn from the run seed; distinct, so that e.g.
# the file order never correlates with the record order.
_FILE_ORDER_STREAM = 1
_SHUFFLE_STREAM = 2
# A rank whose part of the training split decodes to at most this many bytes
# of uint8 pixels keeps it in memory, decoded once (CIFAR-10: 150 MB; MNIST:
# 47 MB), and only augments per epoch; larger parts stream from the shards.
CACHE_BYTES = 2 * 2**30


def steps_per_epoch(metadata, split, global_batch):
  """Steps that see each example of `split` about once: floor(examples / global batch).

  Raises:
    InputError: The split holds fewer examples than one global batch.
  """
  count = _split(metadata, split).num_examples
  if count < global_batch:
    raise InputError(
      f"split {split!r} has {count} examples, fewer than one global batch of "
      f"{global_batch}: lower the batch size or use fewer workers"
    )
  return count // global_batch


def _split(metadata, split):
  if split not in metadata.splits:
    raise InputError(
      f"no split {split!r} in {metadata.dataset}'s "
      f"{METADATA}; it has {', '.join(sorted(metadata.splits))}"
    )
  return metadata.splits[split]


# --- sharding ----------------------------------------------------------------

ShardPlan = collections.namedtuple("ShardPlan", ["files", "by_records", "num_examples"])
ShardPlan.__doc__ = """What one rank reads of a split.

files: Shard file names (relative to the data dir) this rank opens, in order.
by_records: True if the rank reads every file and keeps every `size`-th record.
num_examples: Records this rank gets per pass over the split.
"""


def plan_shards(metadata, split, *, rank, size, training):
  """Decides which part of `split` rank `rank` of `size` reads.

  Whole files per rank (files[rank::size]) when there are at least `size`
  files: each rank reads only its own bytes. Otherwise every rank reads every
  file and keeps records rank, rank + size, ...: correct, but each rank reads
  (and frames, not decodes) all the records, `size` times the I/O. Training
  also falls back to that when whole files would give ranks shares that differ
  by more than 5%, because a rank with fewer records repeats them more often.
  Either way the ranks' parts are disjoint and together cover the split.

  Returns:
    A `ShardPlan`.
  """
  if not 0 <= rank < size:
    raise InputError(f"rank {rank} is not in [0, {size})")
  shards = _split(metadata, split).shards
  if len(shards) >= size:
    shares = [sum(s.num_examples for s in shards[r::size]) for r in range(size)]
    balanced = min(shares) > 0 and max(shares) <= (1 + _MAX_TRAIN_IMBALANCE) * min(shares)
    if balanced or not training:
      return ShardPlan([s.file for s in shards[rank::size]], False, shares[rank])
  total = sum(s.num_examples for s in shards)
  return ShardPlan([s.file for s in shards], True, len(range(rank, total, size)))


# --- augmentation ------------------------------------------------------------


def example_seed(run_seed, augment_seed, epoch):
  """The seed of an example's augmentation: a function of run seed, example and epoch only.

  So the same run seed reproduces every augmented image, each epoch draws fresh
  distortions, and an example's distortions do not depend on which rank reads
  it or where in the stream it lands.

  Args:
    run_seed: The run's seed (int or int64 scalar).
    augment_seed: The example's `augment/seed` (int64 scalar).
    epoch: Pass over the data (int64 scalar).

  Returns:
    An int64 [2] seed for `apply_policy`.
  """
  key = tf.stack([tf.cast(run_seed, tf.int64), tf.cast(augment_seed, tf.int64)])
  return tf.random.experimental.stateless_fold_in(key, tf.cast(epoch, tf.int64))


def _op(step):
  try:
    return augment.op_of(step)
  except ValueError as e:
    raise InputError(str(e)) from None


def apply_policy(image, steps, seed=None):
  """Applies augmentation steps (preprocess/augment.py) to one image.

  Args:
    image: float32 [height, width, channels] tensor, pixels in [0, 255].
    steps: List of {"op": name, **params} dicts, applied in order.
    seed: int32/int64 [2] tensor; required if a step is random. Step i uses
      the seed folded with i, so adding a step leaves the others' draws as they were.

  Returns:
    The float32 image, of shape `augment.output_shape(steps, image.shape)`.

  Raises:
    InputError: Unknown op, or a random op without a seed.
  """
  for i, step in enumerate(steps):
    op = _op(step)
    if not op.random:
      image = op.apply(image, step, None)
      continue
    if seed is None:
      raise InputError(f"augmentation op {op.name!r} is random and needs a seed")
    image = op.apply(image, step, tf.random.experimental.stateless_fold_in(seed, i))
  return image


def serving_preprocess(images, eval_steps):
  """The eval policy on a batch of raw images, for the exported SavedModel.

  Equals `apply_policy` on each image (tests/test_input_pipeline.py checks),
  but runs each op once on the whole batch.

  Args:
    images: uint8 [batch, height, width, channels] tensor, as stored in the shards.
    eval_steps: `metadata.augmentation["eval"]`.

  Returns:
    float32 [batch, height', width', channels] tensor, ready for the model.

  Raises:
    InputError: The policy has a random op (serving must be deterministic).
  """
  images = tf.cast(images, tf.float32)
  for step in eval_steps:
    op = _op(step)
    if op.random:
      raise InputError(
        f"the eval policy has the random op {op.name!r}; serving needs deterministic preprocessing"
      )
    images = op.apply(images, step, None)
  return images


# --- the tf.data input chain -------------------------------------------------


def _decode_fn(metadata, steps, run_seed, with_ids):
  """Returns fn(serialized, epoch) -> (image, label[, source id]) for Dataset.map."""
  raw = _decode_raw_fn(metadata)
  random = any(_op(s).random for s in steps)

  def decode(serialized, epoch):
    image, label, augment_seed, source_id = raw(serialized)
    seed = example_seed(run_seed, augment_seed, epoch) if random else None
    image = apply_policy(tf.cast(image, tf.float32), steps, seed)
    if with_ids:
      return image, label, source_id
    return image, label

  return decode


def _decode_raw_fn(metadata):
  """fn(serialized) -> (uint8 image, int32 label, augment seed, source id): no augmentation."""
  image_shape = list(metadata.image_shape)
  num_classes = metadata.num_classes

  def decode(serialized):
    features = schema.parse_example(serialized)
    # Fails the run on a record of another size, and gives the ops static shapes.
    image = tf.ensure_shape(
      tf.io.decode_image(features[schema.ENCODED], expand_animations=False), image_shape
    )
    label = features[schema.LABEL]
    check = tf.debugging.assert_less(
      label,
      tf.constant(num_classes, tf.int64),
      message=f"label out of range [0, {num_classes}) in a record",
    )
    with tf.control_dependencies([check, tf.debugging.assert_non_negative(label)]):
      label = tf.cast(label, tf.int32)
    return image, label, features[schema.AUGMENT_SEED], features[schema.SOURCE_ID]

  return decode


def _cached_training_dataset(
  files, plan, metadata, steps, *, rank, size, batch_size, seed, with_ids, first_epoch, offset=0
):
  """The training stream from this rank's records, decoded once and held in memory.

  Decoding (PNG, Example parsing) is most of the per-image cost of the
  streaming chain, and it gives the same uint8 pixels every epoch; so it runs
  once, here, and each epoch only draws an order and augments. The order is a
  full permutation per epoch drawn from (run seed, rank, epoch), so the same
  seed gives the same batches and a resumed run (`first_epoch`, `offset`)
  continues the stream; the pixels are `apply_policy` with `example_seed`, exactly those of
  the streaming chain. Augmentation runs per batch (one tf.data element per
  batch, not per image), which removes tf.data's per-element overhead.
  """
  records = tf.data.TFRecordDataset(
    files, num_parallel_reads=min(len(plan.files), _INTERLEAVE_FILES)
  )
  if plan.by_records:
    records = records.shard(size, rank)
  decoded = records.map(
    _decode_raw_fn(metadata), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
  ).batch(4096)
  parts = list(zip(*[tuple(t.numpy() for t in batch) for batch in decoded]))
  # Variables, not constants: tf.data functions capture them by handle, so the
  # pixels are not copied into every function's graph.
  images, labels, aug_seeds, ids = (tf.Variable(np.concatenate(p), trainable=False) for p in parts)
  count = int(images.shape[0])
  order_key = tf.random.experimental.stateless_fold_in(
    tf.constant([seed, _SHUFFLE_STREAM], tf.int64), rank
  )
  random = any(_op(s).random for s in steps)

  def epoch_indices(epoch):
    order = tf.argsort(
      tf.random.stateless_uniform(
        [count], tf.random.experimental.stateless_fold_in(order_key, epoch)
      )
    )
    return tf.data.Dataset.from_tensor_slices((order, tf.fill([count], epoch)))

  def augment_one(args):
    image, aug_seed, epoch = args
    example = example_seed(seed, aug_seed, epoch) if random else None
    return apply_policy(tf.cast(image, tf.float32), steps, example)

  def batch_fn(index, epoch):
    batch_images = tf.map_fn(
      augment_one,
      (tf.gather(images, index), tf.gather(aug_seeds, index), epoch),
      fn_output_signature=tf.float32,
    )
    out = (batch_images, tf.gather(labels, index))
    return out + (tf.gather(ids, index),) if with_ids else out

  dataset = tf.data.Dataset.counter(start=first_epoch).flat_map(epoch_indices)
  # Mid-epoch resume: skipping indices is free (nothing is read or augmented).
  dataset = dataset.skip(offset) if offset else dataset
  dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = dataset.map(batch_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset.prefetch(tf.data.AUTOTUNE)


def _policy(data_dir, metadata, training, image_shape):
  """The augmentation steps of `training`'s policy, checked against the model's input shape."""
  which = "train" if training else "eval"
  steps = metadata.augmentation[which]
  try:
    produced = augment.output_shape(steps, metadata.image_shape)
  except ValueError as e:
    raise InputError(f"{join(data_dir, METADATA)}: bad {which} augmentation policy ({e})") from None
  if image_shape is not None and (
    len(image_shape) != 3 or any(m is not None and m != p for m, p in zip(image_shape, produced))
  ):
    raise InputError(
      f"model expects {format_shape(image_shape)} but the data's {which} policy "
      f"produces {format_shape(produced)} ({join(data_dir, METADATA)})"
    )
  return steps


def _streamed_records(files, plan, rank, size, seed, shuffle_buffer, first_epoch, offset):
  """(serialized record, epoch) of this rank's endless training stream, read from the shards."""
  buffer = shuffle_buffer or min(plan.num_examples, _DEFAULT_SHUFFLE_BUFFER)
  file_key = tf.constant([seed, _FILE_ORDER_STREAM], tf.int64)
  # Ranks differ in what they read, so their record orders should too. A
  # Python int, not a per-epoch tensor: tf.data's shuffle compares its seed
  # pair with (0, 0) in Python, which fails for a tensor seed when the global
  # seed is 0. Epochs still differ: each reads its files in a new order.
  shuffle_seed = (seed * 1_000_003 + rank * 7_919 + _SHUFFLE_STREAM) % (2**31 - 1)

  def epoch_records(epoch):
    """One pass over this rank's records, in an order drawn for this epoch."""
    # File order from the run seed and epoch, not the rank: under record
    # sharding every rank must see the same order for shard() to partition it.
    order = tf.argsort(
      tf.random.stateless_uniform(
        [len(plan.files)], tf.random.experimental.stateless_fold_in(file_key, epoch)
      )
    )
    records = tf.data.Dataset.from_tensor_slices(tf.gather(files, order)).interleave(
      tf.data.TFRecordDataset,
      cycle_length=min(len(plan.files), _INTERLEAVE_FILES),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
    )
    if plan.by_records:
      # Sharded before shuffling, so each record goes to exactly one rank.
      records = records.shard(size, rank)
    # Shuffle serialized records, not decoded images: a CIFAR record is ~2.5 KB
    # against 12 KB of float32 pixels. Dataset.shuffle also mixes in TF's
    # global seed when one is set (train.py sets it from the run seed and rank).
    records = records.shuffle(buffer, seed=shuffle_seed)
    return records.map(lambda record: (record, epoch))

  # Repeat forever, one epoch after another, numbering them so that each
  # epoch draws fresh augmentation (the loop stops after a number of steps,
  # the same on every rank).
  dataset = tf.data.Dataset.counter(start=first_epoch).flat_map(epoch_records)
  # Mid-epoch resume: the skipped records are read, not decoded.
  return dataset.skip(offset) if offset else dataset


def _eval_records(files, plan, *, rank, size):
  """(serialized record, 0) of this rank's part of an evaluation split, one pass."""
  # One pass in the files' order (their index order in metadata.json), so
  # evaluation sees every record once, deterministically.
  records = tf.data.TFRecordDataset(files)
  if plan.by_records:
    records = records.shard(size, rank)
  return records.map(lambda record: (record, tf.constant(0, tf.int64)))


def _start_of_stream(metadata, split, plan, rank, size, first_epoch, position):
  """(epoch, records into it) where this rank's training stream starts."""
  if plan.num_examples == 0:
    raise InputError(
      f"rank {rank} of {size} gets no records of split {split!r} "
      f"({_split(metadata, split).num_examples} records): use fewer workers"
    )
  offset = 0
  if position is not None:
    first_epoch, offset = divmod(int(position), plan.num_examples)
  return first_epoch, offset


def _decoded_batches(dataset, decode, batch_size, training=False):
  """Batches of decoded, augmented examples from (serialized record, epoch) pairs."""
  # Decode and augment after shuffling (`_streamed_records`); deterministic=True keeps the
  # order, and the stateless ops make the pixels independent of thread timing.
  dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # Batch per worker, after the per-example map. The training stream is
  # endless, so drop_remainder drops nothing there; it makes the batch
  # dimension static, so the train step traces once. Eval keeps the short last
  # batch, so every record counts.
  dataset = dataset.batch(batch_size, drop_remainder=training)
  # Prefetch last, so decoding the next batches overlaps the training step.
  return dataset.prefetch(tf.data.AUTOTUNE)


def make_dataset(
  data_dir,
  metadata,
  split,
  *,
  rank,
  size,
  batch_size,
  training,
  seed,
  image_shape=None,
  with_ids=False,
  shuffle_buffer=None,
  first_epoch=0,
  cache=None,
  position=None,
):
  """Builds the input of one worker: batches of this rank's part of `split`.

  Training: endless, shuffled, augmented with the train policy, every batch
  full. Eval: one pass in file order, eval policy, last batch may be short.

  Args:
    data_dir: Directory holding metadata.json and the shards (local or gs://).
    metadata: `load_metadata(data_dir)`.
    split: "train", "validation" or "test" (a key of metadata.splits).
    rank: This worker's rank, in [0, size).
    size: Number of workers.
    batch_size: Examples per batch on THIS worker (the global batch is
      batch_size * size).
    training: Train (shuffle, repeat, train policy) or evaluate.
    seed: The run seed; the same seed gives the same stream of batches.
    image_shape: The model's (height, width, channels); checked against what
      the policy produces (None dims match anything).
    with_ids: Also yield each batch's `image/source_id` strings (for tests and
      debugging).
    shuffle_buffer: Records in the shuffle buffer (default: this rank's
      records per epoch, at most 10,000).
    first_epoch: Training: the epoch the stream starts at, e.g. for a resumed
      run (step // steps_per_epoch), so it does not replay epoch 0's order and
      augmentation.
    position: Training: examples of this rank's stream consumed before (a
      resumed run's steps x batch_size; trainers/preemption.py). The stream
      starts exactly there, mid-epoch if need be, so a resumed run sees the
      batches an uninterrupted one would. Overrides `first_epoch`.

  Returns:
    A tf.data.Dataset of (images float32 [batch, h, w, c], labels int32
    [batch]) and, with `with_ids`, source ids string [batch].

  Raises:
    InputError: Unknown split, bad rank, a model shape the policy does not
      produce, or (training) a rank that would get no records.
  """
  if batch_size < 1:
    raise InputError(f"batch size must be at least 1, got {batch_size}")
  steps = _policy(data_dir, metadata, training, image_shape)
  # Horovod: each rank reads its own files, or every size-th record.
  plan = plan_shards(metadata, split, rank=rank, size=size, training=training)
  files = tf.constant([join(data_dir, f) for f in plan.files])
  decode = _decode_fn(metadata, steps, seed, with_ids)
  if not training:
    return _decoded_batches(_eval_records(files, plan, rank=rank, size=size), decode, batch_size)
  first_epoch, offset = _start_of_stream(metadata, split, plan, rank, size, first_epoch, position)
  pixels = plan.num_examples * int(np.prod(metadata.image_shape))
  if cache if cache is not None else pixels <= CACHE_BYTES:
    return _cached_training_dataset(
      files,
      plan,
      metadata,
      steps,
      rank=rank,
      size=size,
      batch_size=batch_size,
      seed=seed,
      with_ids=with_ids,
      first_epoch=first_epoch,
      offset=offset,
    )
  records = _streamed_records(files, plan, rank, size, seed, shuffle_buffer, first_epoch, offset)
  return _decoded_batches(records, decode, batch_size, training=True)
