"""Splits and shards: which records go into which output file.

The plan is made on the driver from record counts alone (pipeline/datasets.py),
before any pixels are read. Each output shard becomes one `ShardTask`: a list
of contiguous record ranges of the sources. A worker converts a whole task and
writes its shard in one go, so no step has to gather the data set in memory,
and the same inputs always give the same shards on any runner.
"""

import dataclasses
import math

MIN_SHARDS = 4
RECORDS_PER_SHARD = 4096


@dataclasses.dataclass(frozen=True)
class ShardTask:
  """One output shard and the source record ranges that fill it.

  Attributes:
    split: "train", "validation" or "test".
    index: Shard number, 0-based.
    num_shards: Shards in this split.
    ranges: Tuple of (datasets.Source, start, stop) record ranges, in order.
  """
  split: str
  index: int
  num_shards: int
  ranges: tuple

  @property
  def count(self):
    return sum(stop - start for _, start, stop in self.ranges)

  @property
  def filename(self):
    return shard_name(self.split, self.index, self.num_shards)


def shard_name(split, index, num_shards):
  """`train-00003-of-00016.tfrecord`: the name says the count, so a missing shard shows."""
  return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def default_num_shards(num_records):
  """About 4,096 records a shard, rounded up to a power of two, at least 4.

  Powers of two divide evenly among 2, 4, 8 ... workers, and at least four
  shards let up to four trainers read whole files each; tiny splits get one
  shard per record at most.
  """
  wanted = max(MIN_SHARDS, 2 ** math.ceil(math.log2(max(1, num_records / RECORDS_PER_SHARD))))
  return max(1, min(wanted, num_records))


def ranges_of(sources):
  """Whole-source ranges: [(source, 0, source.count), ...]."""
  return [(s, 0, s.count) for s in sources if s.count]


def take(ranges, n):
  """Splits record ranges into the first `n` records and the rest."""
  head, tail = [], []
  for source, start, stop in ranges:
    k = min(max(n, 0), stop - start)
    if k:
      head.append((source, start, start + k))
    if start + k < stop:
      tail.append((source, start + k, stop))
    n -= k
  return head, tail


def count(ranges):
  return sum(stop - start for _, start, stop in ranges)


def make_splits(splits, validation_size):
  """Record ranges of each output split.

  The validation split is the first `validation_size` training records (the
  MNIST recipe's first 5,000; CIFAR-10 batches are already in random order and
  image folders are listed in hash order), and training keeps the rest.

  Args:
    splits: Split name -> ordered list of `datasets.Source`, with "train" and "test".
    validation_size: Records to move from train to a validation split (0: none).

  Returns:
    Split name -> list of (source, start, stop).

  Raises:
    ValueError: validation_size is negative or leaves no training records.
  """
  train = ranges_of(splits["train"])
  out = {}
  if validation_size:
    if validation_size < 0 or validation_size >= count(train):
      raise ValueError(f"--validation-size {validation_size} must be between 0 and the "
                       f"{count(train)} training records minus one")
    out["validation"], train = take(train, validation_size)
  out["train"] = train
  out["test"] = ranges_of(splits["test"])
  return out


def make_tasks(split_ranges, num_shards=None):
  """Cuts each split into near-equal contiguous shards.

  Args:
    split_ranges: Split name -> list of (source, start, stop), from `make_splits`.
    num_shards: Shards per split, or None for `default_num_shards` of each.

  Returns:
    List of `ShardTask`, ordered by split then index.

  Raises:
    ValueError: More shards were asked for than a split has records.
  """
  tasks = []
  for split, ranges in split_ranges.items():
    total = count(ranges)
    shards = num_shards or default_num_shards(total)
    if total == 0:
      raise ValueError(f"split {split!r} has no records")
    if shards > total:
      raise ValueError(f"--num-shards {shards} is more than the {total} records of split {split!r}")
    rest = ranges
    for i in range(shards):
      size = (i + 1) * total // shards - i * total // shards
      mine, rest = take(rest, size)
      tasks.append(ShardTask(split, i, shards, tuple(mine)))
  return tasks
