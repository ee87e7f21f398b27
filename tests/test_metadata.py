"""Tests for the typed metadata.json in preprocess/schema.py (the Beam job -> trainers contract)."""

import json

import pytest

from preprocess import augment
from preprocess import schema


def _metadata():
  return schema.Metadata(
    dataset="toy",
    class_names=["a", "b"],
    num_classes=2,
    image_shape=[8, 8, 3],
    image_format="png",
    feature_spec={"image/encoded": "bytes"},
    splits={
      "train": schema.SplitInfo(
        3,
        [
          schema.ShardInfo("train-00000-of-00002.tfrecord", 2, "a" * 64, 100),
          schema.ShardInfo("train-00001-of-00002.tfrecord", 1, "b" * 64, 50),
        ],
        [2, 1],
      ),
      "test": schema.SplitInfo(
        1, [schema.ShardInfo("test-00000-of-00001.tfrecord", 1, "c" * 64, 50)], [0, 1]
      ),
    },
    augmentation={
      "train": [{"op": "random_crop", "height": 6, "width": 6}],
      "eval": [{"op": "central_crop", "height": 6, "width": 6}],
    },
    records=schema.RecordCounts(read=5, written=4, rejected=1),
    rejects={"file": "rejects.jsonl", "count": 1, "by_split": {"train": 1}},
    sources={"x.bin": {"sha256": "0" * 64}},
    options={"validation_size": 0, "num_shards": None, "image_size": None},
  )


def test_round_trip_keeps_every_key_in_the_beam_jobs_order():
  meta = _metadata()
  text = meta.to_json()
  assert list(json.loads(text)) == [
    "format_version",
    "dataset",
    "class_names",
    "num_classes",
    "image_shape",
    "image_format",
    "feature_spec",
    "splits",
    "augmentation",
    "records",
    "rejects",
    "sources",
    "options",
  ]
  assert list(json.loads(text)["splits"]["train"]) == ["num_examples", "shards", "label_counts"]
  back = schema.Metadata.from_json(text, "x/metadata.json")
  assert back == meta
  assert back.to_json() == text
  assert back.splits["train"].shards[1].file == "train-00001-of-00002.tfrecord"
  assert back.records.read == 5


def _error(edit):
  data = json.loads(_metadata().to_json())
  edit(data)
  with pytest.raises(schema.MetadataError) as info:
    schema.Metadata.from_json(json.dumps(data), "d/metadata.json")
  message = str(info.value)
  assert "\n" not in message and message.startswith("d/metadata.json: ")
  return message[len("d/metadata.json: ") :]


@pytest.mark.parametrize(
  "edit, expected",
  [
    (lambda d: d.pop("splits"), "missing keys splits"),
    (lambda d: d.pop("dataset"), "missing keys dataset"),
    (lambda d: d.update(num_classes="2"), "num_classes must be an integer, got str"),
    (lambda d: d.update(num_classes=True), "num_classes must be an integer, got bool"),
    (lambda d: d.update(class_names="ab"), "class_names must be a list, got str"),
    (lambda d: d.update(image_shape=[8, 8]), "image_shape must be 3 positive ints, got [8, 8]"),
    (lambda d: d.update(splits=[]), "splits must be an object, got list"),
    (lambda d: d["splits"]["train"].pop("shards"), "missing key splits.train.shards"),
    (
      lambda d: d["splits"]["train"]["shards"][0].update(file=3),
      "splits.train.shards[0].file must be a string, got int",
    ),
    (
      lambda d: d["splits"]["test"]["shards"][0].pop("num_examples"),
      "missing key splits.test.shards[0].num_examples",
    ),
    (lambda d: d.update(records={"read": 1}), "records must hold read, written and rejected"),
    (
      lambda d: d.update(format_version=1),
      "format_version 1, but this reader knows 2: rerun make preprocess with this checkout",
    ),
    (lambda d: d.update(num_classes=3), "num_classes is 3 but class_names has 2 names"),
    (
      lambda d: d["augmentation"]["eval"].append({"op": "blur"}),
      "bad eval augmentation policy (unknown augmentation op 'blur'; known: "
      + ", ".join(sorted(augment.OPS))
      + ")",
    ),
    (lambda d: d["augmentation"].pop("train"), "bad train augmentation policy ('train')"),
    (
      lambda d: d["augmentation"]["train"][0].pop("width"),
      "bad train augmentation policy (augmentation op 'random_crop' needs width)",
    ),
    (
      lambda d: d["splits"]["train"].update(num_examples=4),
      "the shards of split 'train' add up to 3 records, but its num_examples is 4",
    ),
    (
      lambda d: d["splits"]["test"].update(label_counts=[1, 1]),
      "the label_counts of split 'test' add up to 2, but its num_examples is 1",
    ),
  ],
)
def test_bad_metadata_is_one_line_naming_the_file(edit, expected):
  assert _error(edit) == expected


def test_not_json_or_not_an_object():
  with pytest.raises(schema.MetadataError, match=r"^m\.json: not valid JSON"):
    schema.Metadata.from_json("{", "m.json")
  with pytest.raises(schema.MetadataError, match=r"^m\.json: expected a JSON object, got list$"):
    schema.Metadata.from_json("[]", "m.json")


def test_validate_checks_what_the_beam_job_built():
  meta = _metadata()
  meta.validate("out/metadata.json")
  meta.num_classes = "2"
  with pytest.raises(
    schema.MetadataError, match=r"^out/metadata.json: num_classes must be an integer, got str$"
  ):
    meta.validate("out/metadata.json")
  meta = _metadata()
  meta.splits["train"].shards[0] = {"file": "x", "num_examples": 2}
  with pytest.raises(schema.MetadataError, match=r"splits.train.shards\[0\] must be a ShardInfo"):
    meta.validate("out/metadata.json")
