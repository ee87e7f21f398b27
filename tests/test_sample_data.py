"""Tests for preprocess/sample_data.py, the synthetic raw data at the head of the data flow.

Every downstream test trusts these files to be in the official layouts, so they
are checked here with minimal parsers written from the format descriptions
(CIFAR-10 binary records, MNIST IDX, image folders), not with the project's own
readers: a misunderstanding shared by generator and reader would otherwise pass.
"""

import gzip
import hashlib
import re
import struct
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from preprocess import datasets
from preprocess import sample_data

CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_NAMES = [
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
]
MNIST_NAMES = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """Default-size data sets with seed 0, generated once for the module."""
  out = tmp_path_factory.mktemp("raw")
  result = sample_data.generate(out, seed=0)
  return out, result


def read_cifar(path):
  """Returns (labels, images as N x 32 x 32 x 3) from a CIFAR-10 .bin file."""
  data = np.frombuffer(path.read_bytes(), np.uint8)
  assert data.size % CIFAR_RECORD == 0, path
  records = data.reshape(-1, CIFAR_RECORD)
  return records[:, 0], records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_mnist(root, split):
  """Returns (labels, images as N x 28 x 28) from the gzipped IDX pair of `split`."""
  image_name, label_name = MNIST_NAMES[split]
  images = gzip.decompress((root / image_name).read_bytes())
  labels = gzip.decompress((root / label_name).read_bytes())
  magic, n, rows, cols = struct.unpack(">iiii", images[:16])
  assert (magic, rows, cols) == (2051, 28, 28)
  assert len(images) == 16 + n * rows * cols
  magic, n_labels = struct.unpack(">ii", labels[:8])
  assert (magic, n_labels) == (2049, n)
  assert len(labels) == 8 + n
  return (
    np.frombuffer(labels, np.uint8, offset=8),
    np.frombuffer(images, np.uint8, offset=16).reshape(n, rows, cols),
  )


def all_files(root):
  return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def nearest_class_mean_accuracy(x_train, y_train, x_test, y_test):
  """Accuracy of classifying each test vector by the closest class mean."""
  classes = np.unique(y_train)
  means = np.stack([x_train[y_train == c].mean(0) for c in classes])
  dist = ((x_test[:, None, :] - means[None]) ** 2).sum(-1)
  return float((classes[dist.argmin(1)] == y_test).mean())


def standardize(images):
  """Per-image standardization, as the CIFAR-10 trainer does."""
  x = images.reshape(len(images), -1).astype(np.float32)
  return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)


# --- CIFAR-10 ---------------------------------------------------------------


def test_cifar10_layout_counts_and_balance(raw):
  out, result = raw
  root = out / "cifar10" / "cifar-10-batches-bin"
  assert sorted(p.name for p in root.iterdir()) == sorted(
    [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin", "batches.meta.txt"]
  )
  for i in range(1, 6):
    path = root / f"data_batch_{i}.bin"
    assert path.stat().st_size == 500 * CIFAR_RECORD
    labels, _ = read_cifar(path)
    assert np.bincount(labels, minlength=10).tolist() == [50] * 10  # Balanced in each file.
    assert (np.diff(labels) != 0).sum() > 100  # Shuffled, not sorted by class.
  labels, _ = read_cifar(root / "test_batch.bin")
  assert labels.max() <= 9 and np.bincount(labels).tolist() == [50] * 10
  assert result["cifar10"]["counts"] == {"train": 2500, "test": 500}


def test_cifar10_meta_file_lists_the_official_classes(raw):
  out, _ = raw
  text = (out / "cifar10" / "cifar-10-batches-bin" / "batches.meta.txt").read_text()
  assert text.split("\n") == CIFAR_NAMES + ["", ""]  # Ends with a blank line.


def test_cifar10_planes_are_red_green_blue(raw):
  out, _ = raw
  labels, images = read_cifar(out / "cifar10" / "cifar-10-batches-bin" / "data_batch_1.bin")
  # Class 0 is drawn with a red hue: if the planes were interleaved or in
  # another order, the red channel would not dominate the object.
  red_class = images[labels == 0].reshape(-1, 3).astype(int)
  bright_red = (red_class[:, 0] > red_class[:, 1] + 60) & (red_class[:, 0] > red_class[:, 2] + 60)
  bright_blue = (red_class[:, 2] > red_class[:, 0] + 60) & (red_class[:, 2] > red_class[:, 1] + 60)
  assert bright_red.sum() > 10 * max(1, bright_blue.sum())


def test_cifar10_is_learnable(raw):
  out, _ = raw
  root = out / "cifar10" / "cifar-10-batches-bin"
  train = [read_cifar(root / f"data_batch_{i}.bin") for i in range(1, 6)]
  y_train = np.concatenate([t[0] for t in train])
  x_train = np.concatenate([t[1] for t in train])
  y_test, x_test = read_cifar(root / "test_batch.bin")
  # Central 24x24 crop and per-image standardization, as the trainer sees it.
  crop = lambda x: standardize(x[:, 4:28, 4:28])
  accuracy = nearest_class_mean_accuracy(crop(x_train), y_train, crop(x_test), y_test)
  assert accuracy > 0.35, accuracy  # Chance is 0.1; a CNN does far better still.


# --- MNIST ------------------------------------------------------------------


def test_mnist_idx_headers_counts_and_labels(raw):
  out, result = raw
  root = out / "mnist"
  assert sorted(p.name for p in root.iterdir()) == sorted(sum(MNIST_NAMES.values(), ()))
  for split, n in (("train", 6000), ("test", 500)):
    labels, images = read_mnist(root, split)
    assert len(labels) == n
    assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10
    assert labels.max() <= 9
    # MNIST look: exact-0 background, bright strokes.
    assert (np.median(images.reshape(n, -1), axis=1) == 0).all()
    assert (images.reshape(n, -1).max(1) >= 200).all()
  assert result["mnist"]["counts"] == {"train": 6000, "test": 500}


def test_mnist_is_learnable(raw):
  out, _ = raw
  y_train, x_train = read_mnist(out / "mnist", "train")
  y_test, x_test = read_mnist(out / "mnist", "test")
  flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255
  accuracy = nearest_class_mean_accuracy(flat(x_train), y_train, flat(x_test), y_test)
  assert accuracy > 0.6, accuracy  # Chance is 0.1.


# --- cat/dog ----------------------------------------------------------------


def test_catdog_files_decode_with_varied_sizes_and_formats(raw):
  out, result = raw
  root = out / "catdog"
  numbers = set()
  for split, per_class in (("train", 150), ("test", 30)):
    assert sorted(p.name for p in (root / split).iterdir()) == ["cat", "dog"]
    formats, modes, sizes = [], [], []
    for cls in ("cat", "dog"):
      files = sorted((root / split / cls).iterdir())
      assert len(files) == per_class
      for path in files:
        match = re.fullmatch(rf"{cls}\.(\d+)\.(jpg|png)", path.name)
        assert match, path
        numbers.add((cls, int(match.group(1))))
        with Image.open(path) as image:
          image.load()  # Decodes the whole file, not just the header.
          assert image.format == {"jpg": "JPEG", "png": "PNG"}[match.group(2)]
          formats.append(image.format)
          modes.append(image.mode)
          sizes.append(image.size)
    assert "PNG" in formats and "JPEG" in formats
    assert "L" in modes and "RGB" in modes
    assert formats.count("PNG") <= 0.1 * len(formats) and modes.count("L") <= 0.1 * len(modes)
    assert (150, 150) not in sizes
    assert all(50 <= side <= 420 for size in sizes for side in size)
    assert len(set(sizes)) > 0.8 * len(sizes)
    assert len({w for w, _ in sizes}) > 10 and len({w / h for w, h in sizes}) > 10
  assert len(numbers) == 2 * (150 + 30)  # File names unique across splits.
  assert result["catdog"]["counts"] == {"train": 300, "test": 60}


def test_catdog_refuses_to_mix_with_leftover_files(tmp_path):
  leftover = tmp_path / "catdog" / "train" / "cat" / "cat.99999.jpg"
  leftover.parent.mkdir(parents=True)
  leftover.write_bytes(b"from an earlier --full run")
  with pytest.raises(FileExistsError, match="would not write"):
    sample_data.generate(tmp_path, names=("catdog",))
  assert all_files(tmp_path) == [leftover.relative_to(tmp_path)]  # Nothing written.


# --- all data sets ----------------------------------------------------------


def test_no_two_images_have_identical_pixels(raw):
  out, _ = raw
  root = out / "cifar10" / "cifar-10-batches-bin"
  cifar = [read_cifar(p)[1] for p in sorted(root.glob("*.bin"))]
  pixels = [img.tobytes() for batch in cifar for img in batch]
  assert len(set(pixels)) == len(pixels) == 3000
  mnist = [
    img.tobytes() for split in ("train", "test") for img in read_mnist(out / "mnist", split)[1]
  ]
  assert len(set(mnist)) == len(mnist) == 6500
  catdog = []
  for path in sorted((out / "catdog").rglob("*.*")):
    with Image.open(path) as image:
      catdog.append(hashlib.sha256(image.convert("RGB").tobytes()).hexdigest())
  assert len(set(catdog)) == len(catdog) == 360


def test_result_lists_every_written_file(raw):
  out, result = raw
  listed = sorted(p.relative_to(out) for info in result.values() for p in info["files"])
  assert listed == all_files(out)


def test_same_seed_same_bytes_across_processes_and_different_seed_differs(raw, tmp_path):
  out, _ = raw
  # Through the CLI in a fresh interpreter: also catches output that depends on
  # hash randomization or on anything else that varies between processes.
  again = tmp_path / "again"
  subprocess.run(
    [sys.executable, "-m", "preprocess.sample_data", "--out-dir", str(again), "--seed", "0"],
    check=True,
    capture_output=True,
  )
  files = all_files(out)
  assert all_files(again) == files
  for rel in files:
    assert (again / rel).read_bytes() == (out / rel).read_bytes(), rel

  other = tmp_path / "other"
  sample_data.generate(other, seed=1)
  # Which cat/dog files are PNG is random too, so only their number must match.
  other_files = all_files(other)
  assert len(other_files) == len(files)
  not_catdog = lambda paths: [p for p in paths if p.parts[0] != "catdog"]
  assert not_catdog(other_files) == not_catdog(files)
  common = set(files) & set(other_files)
  assert len(common) > 0.8 * len(files)
  for rel in common:
    if rel.name != "batches.meta.txt":
      assert (other / rel).read_bytes() != (out / rel).read_bytes(), rel


def test_one_data_set_alone_equals_its_part_of_all(raw, tmp_path):
  out, _ = raw
  sample_data.generate(tmp_path, names=("mnist",), seed=0)
  files = all_files(tmp_path)
  assert files == [p.relative_to(out) for p in sorted((out / "mnist").iterdir())]
  for rel in files:
    assert (tmp_path / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_generate_rejects_unknown_data_sets_and_negative_seeds(tmp_path):
  with pytest.raises(ValueError, match="imagenet"):
    sample_data.generate(tmp_path, names=("imagenet",))
  with pytest.raises(ValueError, match="non-negative"):
    sample_data.generate(tmp_path, names=("mnist",), seed=-1)
  assert not any(tmp_path.iterdir())


# --- command line -----------------------------------------------------------


def run_cli(*args, cwd=None):
  return subprocess.run(
    [sys.executable, "-m", "preprocess.sample_data", *args],
    capture_output=True,
    text=True,
    check=False,
    cwd=cwd,
  )


def test_cli_help():
  proc = run_cli("--help")
  assert proc.returncode == 0
  for flag in ("--out-dir", "--dataset", "--full", "--seed", *datasets.names()):
    assert flag in proc.stdout


@pytest.mark.parametrize(
  "args, mentions",
  [
    (["--out-dir", "x", "--bogus"], "--bogus"),
    (["--out-dir", "x", "--dataset", "imagenet"], "imagenet"),
    (["--dataset", "mnist"], "--out-dir"),
    (["--out-dir", "x", "--seed", "-3"], "--seed"),
  ],
)
def test_cli_usage_errors_are_one_line(args, mentions, tmp_path):
  proc = run_cli(*args, cwd=tmp_path)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "error" in lines[0] and mentions in lines[0], proc.stderr
  assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_full_sizes_match_the_official_data_sets(tmp_path):
  result = sample_data.generate(tmp_path, full=True)
  root = tmp_path / "cifar10" / "cifar-10-batches-bin"
  for i in range(1, 6):
    assert (root / f"data_batch_{i}.bin").stat().st_size == 10000 * CIFAR_RECORD
  assert (root / "test_batch.bin").stat().st_size == 10000 * CIFAR_RECORD
  assert [len(read_mnist(tmp_path / "mnist", s)[0]) for s in ("train", "test")] == [60000, 10000]
  for split, per_class in (("train", 2000), ("test", 500)):
    for cls in ("cat", "dog"):
      assert len(list((tmp_path / "catdog" / split / cls).iterdir())) == per_class
  assert {k: v["counts"] for k, v in result.items()} == {
    "cifar10": {"train": 50000, "test": 10000},
    "mnist": {"train": 60000, "test": 10000},
    "catdog": {"train": 4000, "test": 1000},
  }
