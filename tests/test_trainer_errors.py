"""Bad input to the trainers gives one line naming the file and the problem, never a traceback.

Each test makes its own bad input: flags, a damaged copy of the sample shards,
edited metadata, a model dir that is a file or holds a damaged config.json or
checkpoint, a full disk. All runs are the real entry scripts (conftest.run_trainer).
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.conftest import run_trainer

TINY = [
  "--recipe",
  "tiny",
  "--batch-size",
  "16",
  "--eval-every",
  "0",
  "--log-every",
  "10",
  "--summary-every",
  "0",
  "--histogram-every",
  "0",
  "--no-export",
]


def one_line_error(result, *needles):
  """The run failed with exactly one error line containing each needle, and no traceback."""
  assert result.returncode != 0, result.stdout[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if "error:" in l]
  assert len(errors) == 1, result.stderr[-3000:]
  for needle in needles:
    assert str(needle) in errors[0], errors[0]
  return errors[0]


# --- flags, before TensorFlow ------------------------------------------------


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--epochs", "nan"], "--epochs must be a positive finite number, got nan"),
    (["--epochs", "inf"], "--epochs must be a positive finite number, got inf"),
    (["--epochs", "-1"], "--epochs must be a positive finite number"),
    (["--learning-rate", "inf"], "--learning-rate must be a positive finite number"),
    (["--learning-rate", "0"], "--learning-rate must be a positive finite number"),
    (["--lr-decay-rate", "nan"], "--lr-decay-rate must be a positive finite number"),
    (["--lr-decay-rate", "2"], "--lr-decay-rate must be at most 1"),
    (["--seed", "-1"], "--seed must be between 0 and 2147483647"),
    (["--seed", str(2**40)], "--seed must be between 0 and 2147483647"),
    (["--seed", "1.5"], "invalid int value"),
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--keep-checkpoints", "-3"], "--keep-checkpoints must be at least 1"),
    (["--warmup-steps", "-1"], "--warmup-steps must not be negative"),
    (["--warmup-epochs", "nan"], "--warmup-epochs must be a non-negative finite number"),
    (["--model-dir", ""], "--model-dir must not be empty"),
    (["--data-dir", " "], "--data-dir must not be empty"),
  ],
)
def test_bad_flags_are_one_line_before_tensorflow(flags, message):
  """Rejected at parse time, in one line, without importing TensorFlow (so in well under 4 s)."""
  started = time.time()
  result = run_trainer("cifar10", flags, check=False)
  elapsed = time.time() - started
  assert result.returncode == 2
  assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert elapsed < 2.0, f"{elapsed:.1f}s: flags are checked after a heavy import"


def test_help_and_config_parsing_import_no_tensorflow():
  started = time.time()
  out = run_trainer("cifar10", ["--help"]).stdout
  assert time.time() - started < 2.0 and "--warmup-epochs" in out
  code = (
    "import sys; from trainers import config; config.parse('cifar10', ['--recipe', 'tiny']); "
    "config.parse(None, ['--dataset', 'mnist']); "
    "print(sorted(m for m in ('tensorflow', 'horovod', 'keras.src') if m in sys.modules))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout
  assert out.strip() == "[]"


# --- quiet output ------------------------------------------------------------


def test_a_run_prints_no_library_banners(tfrecords, tmp_path):
  result = run_trainer(
    "mnist",
    ["--data-dir", tfrecords / "mnist", "--model-dir", tmp_path / "m", "--max-steps", "3"] + TINY,
  )
  for banner in ("oneDNN", "absl::InitializeLog", "cpu_feature_guard", "To enable the following"):
    assert banner not in result.stderr + result.stdout, result.stderr
  assert "test precision@1" in result.stdout


# --- damaged shards ----------------------------------------------------------


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def _record_offset(path, index):
  """Byte offset of record `index` of a TFRecord file, from its framing."""
  with open(path, "rb") as f:
    data = f.read()
  offset = 0
  for _ in range(index):
    offset += 16 + int.from_bytes(data[offset : offset + 8], "little")
  return offset


def _flip(path, offset):
  data = bytearray(path.read_bytes())
  data[offset] ^= 0x01
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("split, where", [("test", "data"), ("train", "data"), ("train", "length")])
def test_a_flipped_byte_in_a_shard_is_one_line_naming_shard_and_offset(
  tfrecords, tmp_path, split, where
):
  """One flipped byte (in a record's data or its length's CRC) in a shard that the record counts still
  accept: the run fails with the shard and the record's offset, never a 26-line DataLossError,
  and never exits 0 without its metrics."""
  data = _copy(tfrecords / "mnist", tmp_path / "data")
  shard = data / f"{split}-00001-of-00004.tfrecord"
  offset = _record_offset(shard, 3)
  _flip(shard, offset + (12 + 50 if where == "data" else 9))
  result = run_trainer(
    "mnist",
    ["--data-dir", data, "--model-dir", tmp_path / "m", "--max-steps", "3"] + TINY,
    check=False,
  )
  one_line_error(result, shard.name, "corrupted record 3", f"at byte {offset}")
  assert "DataLossError" not in result.stderr
  assert not (tmp_path / "m" / "metrics.json").exists()


def test_find_corruption_checks_every_record(tfrecords, tmp_path):
  from preprocess import schema

  data = _copy(tfrecords / "catdog", tmp_path / "data")
  shard = data / "train-00000-of-00004.tfrecord"
  assert schema.find_corruption(str(shard)) is None
  last = _record_offset(shard, 5)
  _flip(shard, shard.stat().st_size - 1)  # the last record's data CRC
  found = schema.find_corruption(str(shard))
  assert found and found.offset > last and "CRC" in found.problem
  shard.write_bytes(shard.read_bytes()[: last + 20])
  assert schema.find_corruption(str(shard)) == schema.Corruption(
    5, last, "file ends inside the record: truncated"
  )


def test_a_truncated_shard_is_one_line_at_start_up(tfrecords, tmp_path):
  data = _copy(tfrecords / "mnist", tmp_path / "data")
  shard = data / "train-00002-of-00004.tfrecord"
  shard.write_bytes(shard.read_bytes()[:-7])
  result = run_trainer(
    "mnist",
    ["--data-dir", data, "--model-dir", tmp_path / "m", "--max-steps", "3"] + TINY,
    check=False,
  )
  one_line_error(result, shard.name, "truncated")


# --- metadata against the shards ---------------------------------------------


def _edit_metadata(data, edit):
  path = data / "metadata.json"
  meta = json.loads(path.read_text())
  edit(meta)
  path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
  "edit, needles",
  [
    (lambda m: m.update(image_shape=[32, 32, 1]), ["28x28x1 image", "32x32x1"]),
    (lambda m: m.update(image_shape=[28, 28, 3]), ["28x28x1 image", "28x28x3"]),
    (lambda m: m.update(class_names=list(reversed(m["class_names"]))), ["names class"]),
    (lambda m: m.update(num_classes=12, class_names=m["class_names"] + ["x", "y"]), []),
    (lambda m: m.update(num_classes=5, class_names=m["class_names"][:5]), []),
  ],
)
def test_metadata_edited_after_conversion_is_one_line(tfrecords, tmp_path, edit, needles):
  data = _copy(tfrecords / "mnist", tmp_path / "data")
  _edit_metadata(data, edit)
  result = run_trainer(
    "mnist",
    ["--data-dir", data, "--model-dir", tmp_path / "m", "--max-steps", "3"] + TINY,
    check=False,
  )
  one_line_error(result, *needles)
  assert "metadata.json" in result.stderr or ".tfrecord" in result.stderr


def test_a_foreign_shard_with_the_same_record_count_is_one_line(tfrecords, tmp_path):
  """CIFAR-10 records in place of an MNIST shard, as many as it held: counts agree, the size does
  not; with its size and no head digest in metadata.json (as if edited), the first record does
  not."""
  from trainers import shards

  data = _copy(tfrecords / "mnist", tmp_path / "data")
  entry = json.loads((data / "metadata.json").read_text())["splits"]["test"]["shards"][0]
  records = b""
  for shard in sorted((tfrecords / "cifar10").glob("test-*.tfrecord")):
    blob = shard.read_bytes()
    for offset in _records(shard):
      records += blob[offset : offset + 16 + int.from_bytes(blob[offset : offset + 8], "little")]
      if sum(1 for _ in _records_of(records)) == entry["num_examples"]:
        break
    else:
      continue
    break
  (data / entry["file"]).write_bytes(records)
  with pytest.raises(shards.InputError, match=f"{len(records):,} bytes, but metadata.json says"):
    shards.load_metadata(str(data))

  def sized_like_it(meta):
    shard = meta["splits"]["test"]["shards"][0]
    shard.update(num_bytes=len(records))
    shard.pop("head_sha256")

  _edit_metadata(data, sized_like_it)
  result = run_trainer(
    "mnist",
    ["--data-dir", data, "--model-dir", tmp_path / "m", "--max-steps", "3"] + TINY,
    check=False,
  )
  one_line_error(result, entry["file"], "32x32x3 image but metadata.json says 28x28x1")


def _records_of(blob):
  offset = 0
  while offset < len(blob):
    yield offset
    offset += 16 + int.from_bytes(blob[offset : offset + 8], "little")


def _records(path):
  return list(_records_of(path.read_bytes()))


# --- the model dir -----------------------------------------------------------


def _train(tfrecords, model_dir, dataset="mnist", steps=3, extra=()):
  return run_trainer(
    dataset,
    [
      "--data-dir",
      tfrecords / dataset,
      "--model-dir",
      model_dir,
      "--max-steps",
      steps,
      "--checkpoint-every",
      2,
    ]
    + TINY
    + list(extra),
    check=False,
  )


def test_a_model_dir_that_is_a_file_is_one_line(tfrecords, tmp_path):
  (tmp_path / "m").write_text("not a dir")
  one_line_error(_train(tfrecords, tmp_path / "m"), tmp_path / "m", "is a file")
  one_line_error(
    _train(tfrecords, tmp_path / "m" / "sub"), tmp_path / "m" / "sub", "cannot be created"
  )


@pytest.mark.parametrize("damage", ["truncated", "not json", "a list", "a directory"])
def test_a_damaged_config_json_is_one_line(tfrecords, tmp_path, damage):
  model_dir = tmp_path / "m"
  assert _train(tfrecords, model_dir).returncode == 0
  saved = model_dir / "config.json"
  text = saved.read_text()
  if damage == "truncated":
    saved.write_text(text[: len(text) // 2])
  elif damage == "not json":
    saved.write_bytes(b"\xff\xfe garbage")
  elif damage == "a list":
    saved.write_text("[]")
  else:
    saved.unlink()
    saved.mkdir()
  one_line_error(_train(tfrecords, model_dir, steps=5), "config.json")


def test_checkpoints_cut_short_are_one_line(tfrecords, tmp_path):
  """Every checkpoint damaged: one line, no advice to delete (a damaged latest one alone
  falls back to the one before it: tests/test_run_edges.py)."""
  model_dir = tmp_path / "m"
  assert _train(tfrecords, model_dir).returncode == 0
  data = sorted((model_dir / "checkpoints").glob("ckpt-3.data-*"))[0]
  data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])
  index = model_dir / "checkpoints" / "ckpt-2.index"
  index.write_bytes(index.read_bytes()[:10])
  line = one_line_error(
    _train(tfrecords, model_dir, steps=5), "ckpt-3 is damaged", "so are ckpt-2", "no intact"
  )
  assert "delete" not in line


def test_a_full_disk_is_one_line(tfrecords, tmp_path):
  """A model dir on a 1 MB tmpfs (root can mount one; else /dev/full stands for the full disk)."""
  mount = tmp_path / "small"
  mount.mkdir()
  mounted = (
    subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
      capture_output=True,
      check=False,
    ).returncode
    == 0
  )
  try:
    model_dir = mount / "m"
    if not mounted:
      model_dir.mkdir()
      os.symlink("/dev/full", model_dir / "config.json.tmp")
    result = run_trainer(
      "cifar10",
      [
        "--data-dir",
        tfrecords / "cifar10",
        "--model-dir",
        model_dir,
        "--max-steps",
        "2",
        "--batch-size",
        "16",
        "--eval-every",
        "0",
        "--summary-every",
        "0",
        "--histogram-every",
        "0",
      ],
      check=False,
    )
    one_line_error(result, "No space left on device", model_dir)
  finally:
    if mounted:
      subprocess.run(["umount", str(mount)], check=False)


# --- resuming on other data --------------------------------------------------


def test_a_run_resumes_only_on_data_of_its_image_shape_and_classes(tfrecords, tmp_path):
  model_dir = tmp_path / "m"
  assert _train(tfrecords, model_dir).returncode == 0
  saved = json.loads((model_dir / "config.json").read_text())
  digest = hashlib.sha256((tfrecords / "mnist" / "metadata.json").read_bytes()).hexdigest()
  assert saved["data"] == {
    "image_shape": [28, 28, 1],
    "num_classes": 10,
    "class_names": saved["data"]["class_names"],
    "splits": {"train": 5500, "validation": 500, "test": 500},
    "metadata_sha256": digest,
  }
  # Another image size (the tiny recipe accepts any): 32x32 images in a copy of the data.
  bigger = _copy(tfrecords / "mnist", tmp_path / "bigger")
  _edit_metadata(bigger, lambda m: m.update(image_shape=[32, 32, 1]))
  result = run_trainer(
    "mnist",
    ["--data-dir", bigger, "--model-dir", model_dir, "--max-steps", "5"] + TINY,
    check=False,
  )
  one_line_error(result, "config.json", "[28, 28, 1]", "[32, 32, 1]")
  # Other classes (same shape): class names renamed in a copy of the data.
  data = _copy(tfrecords / "mnist", tmp_path / "data")
  _edit_metadata(data, lambda m: m.update(class_names=[f"c{i}" for i in range(10)]))
  result = run_trainer(
    "mnist",
    ["--data-dir", data, "--model-dir", model_dir, "--max-steps", "5", "--mode", "eval"] + TINY,
    check=False,
  )
  one_line_error(result, "config.json", "class names")


def _moved_to_train(meta, split="validation"):
  """metadata.json as if converted with one shard of `split` less: other split sizes, same shards."""
  moved = meta["splits"][split]["shards"].pop()
  for name, sign in (("train", 1), (split, -1)):
    meta["splits"][name]["num_examples"] += sign * moved["num_examples"]
    meta["splits"][name].pop("label_counts")
  meta["splits"]["train"]["shards"].append(moved)


def test_resume_on_other_data_is_refused_in_one_line_unless_accepted(tfrecords, tmp_path):
  """Data converted again with other split sizes between two runs of one model dir."""
  model_dir = tmp_path / "m"
  assert _train(tfrecords, model_dir).returncode == 0
  other = _copy(tfrecords / "mnist", tmp_path / "other")
  _edit_metadata(other, _moved_to_train)
  flags = ["--data-dir", other, "--model-dir", model_dir, "--max-steps", "5"] + TINY
  refused = run_trainer("mnist", flags, check=False)
  one_line_error(
    refused, "config.json", "trained on other data", "train 5,500 -> 5,625", "--accept-new-data"
  )
  accepted = run_trainer("mnist", flags + ["--accept-new-data"])
  assert "resuming on other data (--accept-new-data)" in accepted.stdout
  assert "step 5/5" in accepted.stdout
  saved = json.loads((model_dir / "config.json").read_text())["data"]
  assert saved["splits"]["train"] == 5625
  assert (
    saved["metadata_sha256"] == hashlib.sha256((other / "metadata.json").read_bytes()).hexdigest()
  )
  # Evaluating on the first data is legitimate: said in one line, not refused.
  evaluated = run_trainer(
    "mnist", ["--data-dir", tfrecords / "mnist", "--model-dir", model_dir, "--mode", "eval"]
  )
  assert "note: the run in" in evaluated.stdout and "train 5,625 -> 5,500" in evaluated.stdout


def test_max_steps_already_reached_says_so_and_redoes_nothing(tfrecords, tmp_path):
  model_dir = tmp_path / "m"
  flags = ["--data-dir", tfrecords / "mnist", "--model-dir", model_dir] + TINY[:-1]
  run_trainer("mnist", flags + ["--max-steps", "3"])
  metrics = (model_dir / "metrics.json").read_text()
  shutil.rmtree(model_dir / "export")  # as if the first run had been stopped before its export
  again = run_trainer("mnist", flags + ["--max-steps", "2"])
  lines = [l for l in again.stdout.splitlines() if "nothing to train" in l]
  assert len(lines) == 1 and "at step 3 and --max-steps is 2" in lines[0], again.stdout
  assert "exporting it" in lines[0] and "evaluating" not in lines[0], lines[0]
  assert "precision@1" not in again.stdout and "trained" not in again.stdout
  assert (model_dir / "export" / "saved_model.pb").exists()
  assert (model_dir / "metrics.json").read_text() == metrics
  assert [p.name for p in (model_dir / "checkpoints").glob("ckpt-*.index")] == ["ckpt-3.index"]
  # Everything up to date: one line and no work at all.
  export_time = (model_dir / "export" / "saved_model.pb").stat().st_mtime_ns
  third = run_trainer("mnist", flags)
  assert "nothing else to do" in third.stdout and "exported" not in third.stdout, third.stdout
  assert (model_dir / "export" / "saved_model.pb").stat().st_mtime_ns == export_time
  # Export needs only config.json: its data dir gone, --data-dir not given.
  saved = json.loads((model_dir / "config.json").read_text())
  saved["data_dir"] = str(tmp_path / "gone")
  (model_dir / "config.json").write_text(json.dumps(saved))
  shutil.rmtree(model_dir / "export")
  exported = run_trainer("mnist", ["--model-dir", model_dir, "--mode", "export"])
  assert "exported the serving model" in exported.stdout and "make preprocess" not in (
    exported.stderr
  )
  assert (model_dir / "export" / "saved_model.pb").exists()


@pytest.mark.parametrize(
  "edit, needles",
  [
    (lambda c: c.update(precision="float64"), ["precision is 'float64'", "mixed_bfloat16"]),
    (lambda c: c.update(lr_scaling="cube"), ["lr_scaling is 'cube'", "sqrt, linear"]),
    (lambda c: c["recipe"].update(name=["tiny"]), ["recipe.name is ['tiny'] (list)", "tiny"]),
    (lambda c: c.update(dataset="imagenet"), ["dataset is 'imagenet'", "cifar10, mnist"]),
    (lambda c: c["recipe"].update(name="cifar10_tutorial"), ["recipe.name", "mnist_basic"]),
    (lambda c: c.update(data="x"), ["data is \"x\", not an object"]),
    (lambda c: c["recipe"].update(batch_size=0), ["recipe.batch_size must be at least 1"]),
  ],
)
def test_config_json_values_out_of_their_choices_are_one_line(tmp_path, edit, needles):
  """Hand-edited config.json, read back by --print-config (no TensorFlow) as by every mode."""
  from trainers import config as config_lib

  model_dir = tmp_path / "m"
  model_dir.mkdir()
  saved = config_lib.parse("mnist", ["--recipe", "tiny", "--model-dir", str(model_dir)]).to_json()
  edit(saved)
  (model_dir / "config.json").write_text(json.dumps(saved, default=str))
  result = run_trainer("mnist", ["--model-dir", model_dir, "--print-config"], check=False)
  assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert "config.json" in result.stderr and "Traceback" not in result.stderr
  for needle in needles:
    assert needle in result.stderr, result.stderr


def test_the_choices_of_config_json_are_the_flags(tmp_path):
  """One list: every flag with choices is checked in config.json against the same choices."""
  from trainers import config as config_lib
  from trainers import recipes

  for flag in (f for f in config_lib.FLAGS if f.choices and f.name not in config_lib.INVOCATION):
    data = {"dataset": "mnist", flag.name: "not-a-choice"}
    with pytest.raises(recipes.ConfigError, match=", ".join(flag.choices)):
      config_lib.check_json_choices(data, "config.json")


def test_paths_that_point_the_wrong_way_are_one_line_naming_the_fix(tfrecords, tmp_path):
  """--data-dir one level too high, a dangling model-dir symlink, an unreachable model dir."""
  from trainers import config as config_lib
  from trainers import run_dir
  from trainers import shards

  with pytest.raises(shards.InputError) as e:
    shards.load_metadata(str(tfrecords), dataset="mnist")
  assert f"pass --data-dir {tfrecords / 'mnist'}" in str(e.value) and "preprocess" not in str(
    e.value
  )
  (tmp_path / "link").symlink_to(tmp_path / "nowhere")
  config = config_lib.parse("mnist", ["--recipe", "tiny", "--model-dir", str(tmp_path / "link")])
  with pytest.raises(run_dir.RunError, match="is a symlink to .*nowhere, which does not exist"):
    run_dir.claim(config, "test", print)
  # A scheme tf.io.gfile has no file system for fails at once, offline, like an unreachable gs://.
  result = run_trainer("mnist", ["--model-dir", "s3://bucket/run", "--recipe", "tiny"], check=False)
  one_line_error(result, "--model-dir s3://bucket/run: cannot be reached", "not implemented")
  assert result.returncode == 2


def _swapped_shards(tfrecords, tmp_path):
  """A copy of the MNIST data with a validation shard and a test shard swapped; returns (data, a, b)."""
  data = _copy(tfrecords / "mnist", tmp_path / "data")
  a, b = data / "validation-00001-of-00004.tfrecord", data / "test-00001-of-00004.tfrecord"
  a_bytes = a.read_bytes()
  a.write_bytes(b.read_bytes())
  b.write_bytes(a_bytes)
  return data, a, b


def test_a_swapped_shard_is_one_line_at_start_up(tfrecords, tmp_path):
  """A validation shard swapped with a test shard: same names, same record counts."""
  data, a, b = _swapped_shards(tfrecords, tmp_path)
  result = run_trainer(
    "mnist",
    ["--data-dir", data, "--model-dir", tmp_path / "m", "--max-steps", "3"] + TINY,
    check=False,
  )
  one_line_error(
    result, a.name, "split 'validation'", "bytes, but metadata.json says", "--verify-data"
  )
  assert not (tmp_path / "m" / "metrics.json").exists()


def test_a_swapped_shard_of_the_same_size_is_caught_by_its_head_digest(tfrecords, tmp_path):
  from trainers import shards

  data, a, b = _swapped_shards(tfrecords, tmp_path)

  def same_sizes(meta):  # as if the two shards had the same size
    for split, shard in (("validation", a), ("test", b)):
      entry = next(s for s in meta["splits"][split]["shards"] if s["file"] == shard.name)
      entry["num_bytes"] = shard.stat().st_size

  _edit_metadata(data, same_sizes)
  with pytest.raises(shards.InputError, match="the sha256 of its first 65,536 bytes"):
    shards.load_metadata(str(data))
  # metadata.json of an earlier job, without head digests: still read, the digest not checked.
  _edit_metadata(
    data,
    lambda m: [s.pop("head_sha256") for split in m["splits"].values() for s in split["shards"]],
  )
  assert shards.load_metadata(str(data)).splits["validation"].shards[1].head_sha256 is None


# --- the README's command with more workers ----------------------------------


def test_warmup_and_lr_scaling_rule(tmp_path):
  from trainers import config as config_lib
  from trainers import schedule

  default = config_lib.parse("cifar10", [])
  assert schedule.warmup_steps(default, 1, 8, 1_000_000) == 0  # one worker: the recipe as written
  assert (
    schedule.warmup_steps(default, 2, 8, 1_000_000) == 100
  )  # 5 epochs = 40 < the 100-step floor
  assert schedule.warmup_steps(default, 2, 195, 1_000_000) == 975  # 5 epochs of CIFAR-10 at 256
  assert schedule.warmup_steps(default, 2, 195, 200) == 50  # at most a quarter of a short run
  assert schedule.warmup_steps(config_lib.parse("cifar10", ["--no-scale-lr"]), 4, 8, 1000) == 0
  assert (
    schedule.warmup_steps(config_lib.parse("cifar10", ["--warmup-epochs", "2"]), 1, 8, 1000) == 16
  )
  assert schedule.lr_scale(default, 4) == 2.0
  assert schedule.lr_scale(config_lib.parse("cifar10", ["--lr-scaling", "linear"]), 4) == 4
  rate = schedule.create_learning_rate_fn(default, 4, 8, 1000)
  # Warmup from the one-worker rate (0.1) up to the scaled rate (0.2).
  assert abs(float(rate(0)) - 0.1 * (1 + 1 / 100)) < 1e-6
  assert abs(float(rate(99)) - 0.2) < 1e-6 and abs(float(rate(500)) - 0.2) < 1e-6


@pytest.mark.slow
def test_the_readme_command_trains_stably_with_two_workers(tfrecords, tmp_path):
  """`horovodrun -np 2 trainers/cifar10.py` with the defaults (only the length and paths set):
  diverged at step ~158-240 with the linear rule (0.2), trains at sqrt(2) x 0.1 with warmup."""
  result = run_trainer(
    "cifar10",
    [
      "--data-dir",
      tfrecords / "cifar10",
      "--model-dir",
      tmp_path / "m",
      "--max-steps",
      "300",
      "--log-every",
      "50",
      "--no-export",
    ],
    np_=2,
  )
  assert (
    "learning rate 0.1414 (0.1 x 1.414 for 2 workers, --lr-scaling sqrt), warmed up over 75 steps"
    in result.stdout
  )
  # Progress lines: every --log-every steps, plus one after the first call and at least
  # every 10 s of wall clock (trainers/reporting.py), so their number depends on speed.
  logged = [
    (int(step), float(loss))
    for step, loss in re.findall(r"step (\d+)/300 loss ([0-9.e+-]+|nan|inf) ", result.stdout)
  ]
  assert {50, 100, 150, 200, 250, 300} <= {step for step, _ in logged}, logged
  assert all(loss < 2.5 for _, loss in logged[1:]), logged
  assert json.loads((tmp_path / "m" / "metrics.json").read_text())["precision_at_1"] > 0.3
  for banner in ("oneDNN custom operations", "absl::InitializeLog"):
    assert not [
      l
      for l in result.stdout.splitlines() + result.stderr.splitlines()
      if banner in l and l.startswith("[")
    ], "a rank printed a banner"
