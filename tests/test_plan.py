"""Shard planning: every record lands in exactly one shard of one split, in order."""

import pytest

from pipeline import plan
from preprocess.rawfiles import Source


def _sources(*counts, kind="cifar10"):
  return [Source(kind, (f"/raw/f{i}",), f"f{i}", n) for i, n in enumerate(counts)]


def _ids(ranges):
  return [(s.name, i) for s, start, stop in ranges for i in range(start, stop)]


@pytest.mark.parametrize(
  "n, shards",
  [
    (1, 1),
    (3, 3),
    (4, 4),
    (500, 4),
    (16384, 4),
    (16385, 8),
    (50000, 16),
    (60000, 16),
    (10**6, 256),
  ],
)
def test_default_num_shards(n, shards):
  assert plan.default_num_shards(n) == shards


def test_take_splits_ranges_at_any_record():
  ranges = plan.ranges_of(_sources(3, 4))
  head, tail = plan.take(ranges, 5)
  assert _ids(head) == [("f0", 0), ("f0", 1), ("f0", 2), ("f1", 0), ("f1", 1)]
  assert _ids(tail) == [("f1", 2), ("f1", 3)]
  assert plan.take(ranges, 0) == ([], ranges)
  assert plan.take(ranges, 7) == (ranges, [])


def test_validation_comes_from_the_start_of_train():
  splits = plan.make_splits({"train": _sources(10, 10), "test": _sources(5)}, 12)
  assert _ids(splits["validation"]) == [("f0", i) for i in range(10)] + [("f1", 0), ("f1", 1)]
  assert _ids(splits["train"]) == [("f1", i) for i in range(2, 10)]
  assert plan.count(splits["test"]) == 5
  assert "validation" not in plan.make_splits({"train": _sources(3), "test": _sources(1)}, 0)
  with pytest.raises(ValueError, match="validation-size"):
    plan.make_splits({"train": _sources(3), "test": _sources(1)}, 3)


@pytest.mark.parametrize("num_shards", [None, 1, 3, 7])
def test_tasks_cover_each_record_once_in_near_equal_shards(num_shards):
  splits = plan.make_splits({"train": _sources(10, 0, 13, 7), "test": _sources(9)}, 8)
  tasks = plan.make_tasks(splits, num_shards)
  for split, ranges in splits.items():
    mine = [t for t in tasks if t.split == split]
    assert [t.index for t in mine] == list(range(len(mine)))
    assert all(t.num_shards == len(mine) for t in mine)
    assert [r for t in mine for r in _ids(t.ranges)] == _ids(ranges)
    sizes = [t.count for t in mine]
    assert max(sizes) - min(sizes) <= 1
  assert tasks[0].filename == f"validation-00000-of-{tasks[0].num_shards:05d}.tfrecord"


def test_too_many_shards_is_an_error():
  with pytest.raises(ValueError, match="more than the 2 records of split 'test'"):
    plan.make_tasks({"train": plan.ranges_of(_sources(9)), "test": plan.ranges_of(_sources(2))}, 3)
