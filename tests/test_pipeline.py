"""The Beam job end to end: real runs on generated sample data, shards read back with plain TF.

Shards are read with `tf.data.TFRecordDataset`, `tf.io.parse_single_example` on
the standard keys and `tf.io.decode_image`, and compared with the raw files,
which the tests parse themselves.
"""

import gzip
import hashlib
import json
import pathlib
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from preprocess import datasets
from preprocess import sample_data
from tests.conftest import run_beam_job

STANDARD_KEYS = {
  "image/encoded": tf.io.FixedLenFeature([], tf.string),
  "image/format": tf.io.FixedLenFeature([], tf.string),
  "image/height": tf.io.FixedLenFeature([], tf.int64),
  "image/width": tf.io.FixedLenFeature([], tf.int64),
  "image/channels": tf.io.FixedLenFeature([], tf.int64),
  "image/class/label": tf.io.FixedLenFeature([], tf.int64),
  "image/class/text": tf.io.FixedLenFeature([], tf.string),
  "image/source_id": tf.io.FixedLenFeature([], tf.string),
  "image/key/sha256": tf.io.FixedLenFeature([], tf.string),
  "augment/seed": tf.io.FixedLenFeature([], tf.int64),
}


def build(raw, out, *flags, dataset="cifar10", check=True):
  """Runs `python -m pipeline.build_tfrecords` and returns the CompletedProcess."""
  return run_beam_job(dataset, raw, out, *flags, check=check)


def read_split(out_dir, split):
  """{source_id: parsed features (numpy)} of a split, from the shard files named in metadata."""
  meta = json.loads((out_dir / "metadata.json").read_text())
  files = [str(out_dir / s["file"]) for s in meta["splits"][split]["shards"]]
  rows = {}
  for serialized in tf.data.TFRecordDataset(files):
    ex = tf.io.parse_single_example(serialized, STANDARD_KEYS)
    row = {k: v.numpy() for k, v in ex.items()}
    row["pixels"] = tf.io.decode_image(ex["image/encoded"]).numpy()
    sid = row["image/source_id"].decode()
    assert sid not in rows, f"duplicate record {sid}"
    rows[sid] = row
  return rows


def raw_cifar(path):
  data = np.frombuffer(pathlib.Path(path).read_bytes(), np.uint8).reshape(-1, 3073)
  return data[:, 0], data[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def raw_mnist(images, labels):
  img = gzip.decompress(pathlib.Path(images).read_bytes())
  lab = gzip.decompress(pathlib.Path(labels).read_bytes())
  return np.frombuffer(lab[8:], np.uint8), np.frombuffer(img[16:], np.uint8).reshape(-1, 28, 28, 1)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  root = tmp_path_factory.mktemp("raw")
  sample_data.generate(str(root), seed=3)
  return root


@pytest.fixture(scope="module")
def cifar_out(raw, tmp_path_factory):
  out = tmp_path_factory.mktemp("out")
  result = build(raw, out, "--num-shards", "3")
  return out / "cifar10", result


def test_cifar10_shards_hold_every_record_with_exact_pixels(raw, cifar_out):
  out, result = cifar_out
  meta = json.loads((out / "metadata.json").read_text())
  batches = raw / "cifar10" / "cifar-10-batches-bin"
  for split, files in (
    ("train", [f"data_batch_{i}.bin" for i in range(1, 6)]),
    ("test", ["test_batch.bin"]),
  ):
    rows = read_split(out, split)
    expected = 0
    for fname in files:
      labels, images = raw_cifar(batches / fname)
      expected += len(labels)
      for i in range(len(labels)):
        row = rows[f"cifar-10-batches-bin/{fname}:{i}"]
        np.testing.assert_array_equal(row["pixels"], images[i])
        assert row["image/class/label"] == labels[i]
        assert row["image/class/text"].decode() == meta["class_names"][labels[i]]
        assert row["image/format"] == b"png"
        assert (row["image/height"], row["image/width"], row["image/channels"]) == (32, 32, 3)
    assert len(rows) == expected == meta["splits"][split]["num_examples"]
    shards = meta["splits"][split]["shards"]
    assert [s["file"] for s in shards] == [f"{split}-{i:05d}-of-00003.tfrecord" for i in range(3)]
    assert sum(s["num_examples"] for s in shards) == expected
    assert sum(meta["splits"][split]["label_counts"]) == expected
  assert "validation" not in meta["splits"]
  assert meta["records"] == {"read": 3000, "written": 3000, "rejected": 0, "skipped": 0}
  assert "read 3000 = written 3000 + rejected 0" in result.stderr
  assert (out / "rejects.jsonl").read_text() == ""
  # No temp or work files; the folder's lock file stays, empty once released.
  assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".lock"]
  assert (out / ".lock").read_text() == ""


def test_cifar10_metadata_describes_policy_schema_and_sources(raw, cifar_out):
  out, _ = cifar_out
  meta = json.loads((out / "metadata.json").read_text())
  assert meta["dataset"] == "cifar10" and meta["num_classes"] == 10
  assert meta["image_shape"] == [32, 32, 3]
  assert set(meta["feature_spec"]) == set(STANDARD_KEYS)
  ops = [step["op"] for step in meta["augmentation"]["train"]]
  assert ops == [
    "random_crop",
    "random_flip_left_right",
    "random_brightness",
    "random_contrast",
    "per_image_standardization",
  ]
  assert meta["augmentation"]["train"][2]["max_delta"] == 63
  assert [s["op"] for s in meta["augmentation"]["eval"]] == [
    "central_crop",
    "per_image_standardization",
  ]
  batches = raw / "cifar10" / "cifar-10-batches-bin"
  assert len(meta["sources"]) == 7  # six batch files and batches.meta.txt
  for rel, entry in meta["sources"].items():
    assert entry["sha256"] == hashlib.sha256((raw / "cifar10" / rel).read_bytes()).hexdigest()
  # The per-record content hash and augmentation seed are stable functions of the source.
  rows = read_split(out, "test")
  data = (batches / "test_batch.bin").read_bytes()
  row = rows["cifar-10-batches-bin/test_batch.bin:7"]
  assert row["image/key/sha256"].decode() == hashlib.sha256(data[7 * 3073 : 8 * 3073]).hexdigest()
  seeds = [r["augment/seed"] for r in rows.values()]
  assert len(set(seeds)) == len(seeds) and min(seeds) >= 0


def test_same_inputs_give_byte_identical_output_on_any_runner_setting(raw, cifar_out, tmp_path):
  out, _ = cifar_out
  build(
    raw, tmp_path, "--num-shards", "3", "--direct_num_workers=1", "--direct_running_mode=in_memory"
  )
  again = tmp_path / "cifar10"
  names = sorted(p.name for p in out.iterdir())
  assert names == sorted(p.name for p in again.iterdir())
  for name in names:
    assert (out / name).read_bytes() == (again / name).read_bytes(), name


def test_mnist_validation_is_the_first_training_records_and_splits_are_disjoint(raw, tmp_path):
  build(raw, tmp_path, "--validation-size", "500", dataset="mnist")
  out = tmp_path / "mnist"
  meta = json.loads((out / "metadata.json").read_text())
  mnist = raw / "mnist"
  labels, images = raw_mnist(
    mnist / "train-images-idx3-ubyte.gz", mnist / "train-labels-idx1-ubyte.gz"
  )
  splits = {s: read_split(out, s) for s in ("train", "validation", "test")}
  ids = {s: set(rows) for s, rows in splits.items()}
  assert ids["validation"] == {f"train-images-idx3-ubyte.gz:{i}" for i in range(500)}
  assert ids["train"] == {f"train-images-idx3-ubyte.gz:{i}" for i in range(500, len(labels))}
  assert all(i.startswith("t10k-images-idx3-ubyte.gz:") for i in ids["test"])
  assert not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"])
  for sid, row in list(splits["train"].items())[:200] + list(splits["validation"].items())[:200]:
    i = int(sid.rsplit(":", 1)[1])
    np.testing.assert_array_equal(row["pixels"], images[i])
    assert row["image/class/label"] == labels[i]
  for s, rows in splits.items():
    assert meta["splits"][s]["num_examples"] == len(rows)
  assert meta["image_shape"] == [28, 28, 1] and meta["options"]["validation_size"] == 500
  assert [st["op"] for st in meta["augmentation"]["train"]] == ["scale"]


def test_catdog_resizes_every_image_and_ledgers_bad_files(raw, tmp_path):
  catdog = tmp_path / "raw" / "catdog"
  shutil.copytree(raw / "catdog", catdog)
  good = sum(1 for p in catdog.rglob("*") if p.is_file())
  victim = next((catdog / "train" / "dog").glob("*.jpg"))
  (catdog / "train" / "cat" / "empty.jpg").write_bytes(b"")
  (catdog / "train" / "cat" / "cut.jpg").write_bytes(victim.read_bytes()[:300])
  (catdog / "train" / "cat" / "notes.txt").write_text("not an image")
  (catdog / "test" / "bird").mkdir()
  shutil.copy(victim, catdog / "test" / "bird" / "bird.1.jpg")
  build(tmp_path / "raw", tmp_path / "out", "--validation-size", "20", dataset="catdog")
  out = tmp_path / "out" / "catdog"
  meta = json.loads((out / "metadata.json").read_text())
  rows = {}
  for split in ("train", "validation", "test"):
    part = read_split(out, split)
    assert not set(rows) & set(part)
    rows.update(part)
  assert len(rows) == good == meta["records"]["written"]
  for sid, row in rows.items():
    assert row["pixels"].shape == (150, 150, 3)
    assert row["image/format"] == b"jpeg"
    folder = sid.split("/")[1]
    assert row["image/class/text"].decode() == folder
    assert row["image/class/label"] == ["cat", "dog"].index(folder)
  # The validation split mixes classes (hash order), it is not all cats.
  assert 0 not in meta["splits"]["validation"]["label_counts"]
  ledger = [json.loads(l) for l in (out / "rejects.jsonl").read_text().splitlines()]
  assert {r["file"] for r in ledger} == {
    "train/cat/empty.jpg",
    "train/cat/cut.jpg",
    "test/bird/bird.1.jpg",
  }
  assert all(r["reason"] for r in ledger)
  # A note is not data: skipped and ledgered apart, never a reject.
  skipped = [json.loads(l) for l in (out / "skipped.jsonl").read_text().splitlines()]
  assert [s["file"] for s in skipped] == ["train/cat/notes.txt"]
  assert meta["records"] == {"read": good + 3, "written": good, "rejected": 3, "skipped": 1}


def test_cifar10_archive_is_extracted_and_converted(raw, cifar_out, tmp_path):
  cifar = tmp_path / "raw" / "cifar10"
  cifar.mkdir(parents=True)
  with tarfile.open(cifar / "cifar-10-binary.tar.gz", "w:gz") as tar:
    tar.add(raw / "cifar10" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
  build(tmp_path / "raw", tmp_path / "out", "--num-shards", "3")
  assert (cifar / "cifar-10-batches-bin" / "data_batch_1.bin").exists()
  expected, _ = cifar_out
  for shard in sorted(expected.glob("*.tfrecord")):
    assert (tmp_path / "out" / "cifar10" / shard.name).read_bytes() == shard.read_bytes()


def test_bad_cifar_labels_are_rejected_and_the_rest_kept(raw, tmp_path):
  batches = tmp_path / "raw" / "cifar10" / "cifar-10-batches-bin"
  shutil.copytree(raw / "cifar10" / "cifar-10-batches-bin", batches)
  data = bytearray((batches / "data_batch_2.bin").read_bytes())
  data[5 * 3073] = 12
  data[9 * 3073] = 255
  (batches / "data_batch_2.bin").write_bytes(bytes(data))
  build(tmp_path / "raw", tmp_path / "out")
  out = tmp_path / "out" / "cifar10"
  ledger = [json.loads(l) for l in (out / "rejects.jsonl").read_text().splitlines()]
  assert [(r["file"], r["index"], r["split"]) for r in ledger] == [
    ("cifar-10-batches-bin/data_batch_2.bin", 5, "train"),
    ("cifar-10-batches-bin/data_batch_2.bin", 9, "train"),
  ]
  assert "12" in ledger[0]["reason"]
  meta = json.loads((out / "metadata.json").read_text())
  assert meta["records"] == {"read": 3000, "written": 2998, "rejected": 2, "skipped": 0}
  rows = read_split(out, "train")
  assert len(rows) == 2498 and "cifar-10-batches-bin/data_batch_2.bin:6" in rows


def _broken(raw, tmp_path, dataset, damage):
  shutil.copytree(raw / dataset, tmp_path / "raw" / dataset)
  damage(tmp_path / "raw" / dataset)
  result = build(tmp_path / "raw", tmp_path / "out", dataset=dataset, check=False)
  assert result.returncode != 0
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "out" / dataset / "metadata.json").exists()
  return errors[0]


def _truncate(path, size):
  data = path.read_bytes()
  path.write_bytes(data[:size])


def test_structural_problems_stop_the_run_with_one_line(raw, tmp_path):
  line = _broken(
    raw,
    tmp_path / "a",
    "cifar10",
    lambda d: _truncate(d / "cifar-10-batches-bin" / "data_batch_3.bin", 3073 * 10 + 1),
  )
  assert "data_batch_3.bin" in line and "3073" in line


def test_truncated_gzip_and_bad_magic_stop_mnist(raw, tmp_path):
  line = _broken(
    raw, tmp_path / "a", "mnist", lambda d: _truncate(d / "train-images-idx3-ubyte.gz", 5000)
  )
  assert "train-images-idx3-ubyte.gz" in line

  def bad_magic(d):
    path = d / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[3] = 0x99
    path.write_bytes(gzip.compress(bytes(data)))

  line = _broken(raw, tmp_path / "b", "mnist", bad_magic)
  assert "t10k-labels-idx1-ubyte.gz" in line and "magic" in line


def test_existing_output_is_refused_without_overwrite(raw, cifar_out):
  out, _ = cifar_out
  before = (out / "metadata.json").read_bytes()
  result = build(raw, out.parent, "--num-shards", "3", check=False)
  assert result.returncode != 0 and "--overwrite" in result.stderr
  assert (out / "metadata.json").read_bytes() == before


def test_overwrite_replaces_output_with_a_different_sharding(raw, tmp_path):
  build(raw, tmp_path, "--num-shards", "2")
  build(raw, tmp_path, "--num-shards", "5", "--overwrite")
  names = sorted(p.name for p in (tmp_path / "cifar10").glob("train-*"))
  assert names == [f"train-{i:05d}-of-00005.tfrecord" for i in range(5)]


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--direct_running_mode=multi_threading"], "loses records"),
    (["--no_such_beam_flag=1"], "unrecognized arguments: --no_such_beam_flag"),
    (["--num-shards", "0"], "--num-shards must be at least 1"),
    (["--num-shards", "99999"], "more than the"),
    (["--validation-size", "99999"], "--validation-size"),
  ],
)
def test_bad_flags_get_one_line_errors(raw, tmp_path, flags, message):
  result = build(raw, tmp_path, *flags, check=False)
  assert result.returncode != 0
  assert message in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "cifar10" / "metadata.json").exists()


def test_progress_lines_report_shards_and_records(raw, tmp_path):
  result = build(raw, tmp_path, "--num-shards", "8", "--progress-seconds", "0.2")
  progress = [l for l in result.stderr.splitlines() if l.endswith(" records read")]
  assert progress
  for line in progress:  # 8 train + 8 test shards; 2,500 + 500 records
    assert (
      line.startswith("cifar10: ")
      and "/16 shards, " in line
      and line.endswith("/3000 records read")
    )
  counts = [int(l.split(": ")[1].split("/")[0]) for l in progress]
  assert counts == sorted(counts)  # shards done only ever grow


def test_missing_raw_data_is_a_clear_error(tmp_path):
  result = build(tmp_path / "nothing", tmp_path / "out", dataset="all", check=False)
  *others, last = [f"{name}/" for name in datasets.names()]  # cifar10/, mnist/, catdog/, ...
  assert result.returncode != 0 and f"no {', '.join(others)} or {last}" in result.stderr
  result = build(tmp_path / "nothing", tmp_path / "out", dataset="mnist", check=False)
  assert result.returncode != 0 and "mnist" in result.stderr and "Traceback" not in result.stderr
