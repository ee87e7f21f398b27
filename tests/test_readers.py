"""Tests for the raw-format readers: preprocess/datasets/{cifar10,mnist}.py, preprocess/imagefolder.py.

Every fixture is a tiny file written here byte by byte in the official format
(numpy, struct, gzip, Pillow), so the tests check the readers against the
format specs rather than against another reader. Expected pixels are computed
from the written bytes by explicit offsets, never by the reader's own code.
"""

import gzip
import hashlib
import io
import struct
import warnings

import numpy as np
from PIL import Image
from PIL import ImageFile
import pytest

from preprocess import datasets
from preprocess import fileio
from preprocess import imagefolder
from preprocess.datasets import cifar10
from preprocess.datasets import mnist
from preprocess.errors import DataFormatError
from preprocess.schema import Record
from preprocess.schema import Reject

CIFAR_NAMES = list(datasets.get("cifar10").class_names)
CIFAR_LAYOUT = datasets.get("cifar10").layout
MNIST_LAYOUT = datasets.get("mnist").layout


class _NonSeekable(io.RawIOBase):
  """A stream like a network download: read() only, no seek()."""

  def __init__(self, data, max_read=None):
    super().__init__()
    self._data = io.BytesIO(data)
    self._max_read = max_read  # Short reads, as sockets and pipes do.

  def readable(self):
    return True

  def readinto(self, buf):
    n = len(buf) if self._max_read is None else min(len(buf), self._max_read)
    chunk = self._data.read(n)
    buf[: len(chunk)] = chunk
    return len(chunk)


def non_seekable_opener(path):
  with open(path, "rb") as f:
    return _NonSeekable(f.read(), max_read=1000)


def memory_opener(files):
  """An opener over {path: bytes}, standing in for a remote file system."""
  return lambda path: io.BytesIO(files[path])


def assert_one_line_naming(err, path):
  text = str(err.value)
  assert "\n" not in text
  assert str(path) in text


# --- CIFAR-10 ----------------------------------------------------------------


def cifar_record(label, seed):
  """A raw 3073-byte record: label byte, then R, G, B planes of 1024 bytes."""
  rng = np.random.default_rng(seed)
  planes = rng.integers(0, 256, size=3 * 1024, dtype=np.uint8)
  return bytes([label]) + planes.tobytes()


def write_cifar(path, labels, seed=0):
  records = [cifar_record(label, seed + i) for i, label in enumerate(labels)]
  path.write_bytes(b"".join(records))
  return records


def test_cifar_constants():
  assert cifar10.RECORD_BYTES == 3073
  assert cifar10.IMAGE_SHAPE == (32, 32, 3)
  assert CIFAR_NAMES[0] == "airplane" and CIFAR_NAMES[9] == "truck"
  assert len(set(CIFAR_NAMES)) == 10
  assert CIFAR_LAYOUT.splits["train"] == tuple(f"data_batch_{i}.bin" for i in range(1, 6))
  assert CIFAR_LAYOUT.splits["test"] == ("test_batch.bin",)


def test_cifar_pixels_labels_ids_and_hashes_are_exact(tmp_path):
  path = tmp_path / "data_batch_1.bin"
  raw = write_cifar(path, [3, 0, 9])
  out = list(cifar10.read_records(str(path), "cifar-10-batches-bin/data_batch_1.bin"))
  assert [type(r) for r in out] == [Record] * 3
  assert [r.label for r in out] == [3, 0, 9]
  assert [r.source_id for r in out] == [
    f"cifar-10-batches-bin/data_batch_1.bin:{i}" for i in range(3)
  ]
  for rec, raw_bytes in zip(out, raw):
    assert rec.image.dtype == np.uint8 and rec.image.shape == (32, 32, 3)
    assert rec.content_sha256 == hashlib.sha256(raw_bytes).hexdigest()
    # Byte 1 + c*1024 + row*32 + col is channel c of pixel (row, col).
    for row, col, channel in [
      (0, 0, 0),
      (0, 1, 0),
      (1, 0, 0),
      (0, 0, 1),
      (0, 0, 2),
      (5, 17, 1),
      (31, 30, 2),
      (30, 31, 0),
    ]:
      assert rec.image[row, col, channel] == raw_bytes[1 + channel * 1024 + row * 32 + col]
    expected = np.array(
      [
        [[raw_bytes[1 + c * 1024 + r * 32 + x] for c in range(3)] for x in range(32)]
        for r in range(32)
      ],
      dtype=np.uint8,
    )
    np.testing.assert_array_equal(rec.image, expected)


@pytest.mark.parametrize(
  "opener", [fileio.open_rb, non_seekable_opener], ids=["seekable", "non-seekable"]
)
def test_cifar_range_reads_equal_slices_of_full_read(tmp_path, opener):
  path = tmp_path / "b.bin"
  write_cifar(path, [i % 10 for i in range(300)])  # More than one 256-record read.
  full = list(cifar10.read_records(str(path), "b.bin", opener=opener))
  assert len(full) == 300
  for start, stop in [(0, 300), (5, 17), (250, 260), (255, 257), (299, 300), (7, 7), (0, 1)]:
    part = list(cifar10.read_records(str(path), "b.bin", start, stop, opener=opener))
    assert [r.source_id for r in part] == [r.source_id for r in full[start:stop]]
    for a, b in zip(part, full[start:stop]):
      np.testing.assert_array_equal(a.image, b.image)
      assert a.content_sha256 == b.content_sha256
  tail = list(cifar10.read_records(str(path), "b.bin", 290, None, opener=opener))
  assert [r.source_id for r in tail] == [f"b.bin:{i}" for i in range(290, 300)]


def test_cifar_bad_label_is_rejected_and_the_rest_still_come_through(tmp_path):
  path = tmp_path / "b.bin"
  write_cifar(path, [1, 12, 2, 255])
  out = list(cifar10.read_records(str(path), "dir/b.bin"))
  assert out[1] == Reject(
    file="dir/b.bin", index=1, reason="label byte 12 is not a CIFAR-10 class (0-9)"
  )
  assert out[3] == Reject(
    file="dir/b.bin", index=3, reason="label byte 255 is not a CIFAR-10 class (0-9)"
  )
  assert [(r.source_id, r.label) for r in (out[0], out[2])] == [
    ("dir/b.bin:0", 1),
    ("dir/b.bin:2", 2),
  ]


def test_cifar_count_records_checks_size(tmp_path):
  path = str(tmp_path / "data_batch_1.bin")
  assert cifar10.count_records(path, 10000 * 3073) == 10000
  with pytest.raises(DataFormatError) as err:
    cifar10.count_records(path, 30731)
  assert_one_line_naming(err, path)
  assert (
    "size 30731 bytes is not a multiple of the 3073-byte CIFAR-10 record "
    "(10 whole records + 1 byte)"
  ) in str(err.value)
  with pytest.raises(DataFormatError) as err:
    cifar10.count_records(path, 0)
  assert_one_line_naming(err, path)


def test_cifar_file_ending_mid_record_raises_while_reading(tmp_path):
  path = tmp_path / "b.bin"
  raw = write_cifar(path, [1, 2])
  path.write_bytes(b"".join(raw) + raw[0][:100])
  with pytest.raises(DataFormatError) as err:
    list(cifar10.read_records(str(path), "b.bin"))
  assert_one_line_naming(err, path)
  # A range planned for a longer file fails too, instead of yielding fewer records.
  path.write_bytes(b"".join(raw))
  with pytest.raises(DataFormatError):
    list(cifar10.read_records(str(path), "b.bin", 0, 3))


def test_cifar_class_names(tmp_path):
  path = tmp_path / "batches.meta.txt"
  path.write_text("\n".join(CIFAR_NAMES) + "\n\n  \n")
  assert cifar10.read_class_names(str(path)) == CIFAR_NAMES
  path.write_text("\n".join(CIFAR_NAMES[:9]))
  with pytest.raises(DataFormatError) as err:
    cifar10.read_class_names(str(path))
  assert_one_line_naming(err, path)
  path.write_text("\n".join(CIFAR_NAMES[:9] + ["cat"]))
  with pytest.raises(DataFormatError, match="cat"):
    cifar10.read_class_names(str(path))


def test_cifar_reads_through_the_given_opener_only():
  raw = cifar_record(4, 0) + cifar_record(5, 1)
  opener = memory_opener(
    {"gs://bucket/b.bin": raw, "gs://bucket/meta": "\n".join(CIFAR_NAMES).encode()}
  )
  out = list(cifar10.read_records("gs://bucket/b.bin", "b.bin", 1, 2, opener=opener))
  assert [(r.source_id, r.label) for r in out] == [("b.bin:1", 5)]
  assert cifar10.read_class_names("gs://bucket/meta", opener=opener) == CIFAR_NAMES


# --- MNIST -------------------------------------------------------------------


def idx_bytes(magic, dims, data):
  return struct.pack(f">I{len(dims)}I", magic, *dims) + data


def write_mnist(tmp_path, n, gz, labels=None, seed=0, prefix="train"):
  """Writes an images/labels pair; returns (images_path, labels_path, pixels, labels)."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
  labels = np.array([i % 10 for i in range(n)] if labels is None else labels, dtype=np.uint8)
  suffix = ".gz" if gz else ""
  images_path = tmp_path / f"{prefix}-images-idx3-ubyte{suffix}"
  labels_path = tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}"
  for path, data in [
    (images_path, idx_bytes(2051, (n, 28, 28), pixels.tobytes())),
    (labels_path, idx_bytes(2049, (n,), labels.tobytes())),
  ]:
    path.write_bytes(gzip.compress(data, compresslevel=1, mtime=0) if gz else data)
  return str(images_path), str(labels_path), pixels, labels


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_mnist_valid_files(tmp_path, gz):
  images, labels, pixels, label_values = write_mnist(tmp_path, 5, gz)
  assert mnist.check_files(images, labels) == 5
  name = "train-images-idx3-ubyte" + (".gz" if gz else "")
  out = list(mnist.read_records(images, labels, name))
  assert [r.source_id for r in out] == [f"{name}:{i}" for i in range(5)]
  assert [r.label for r in out] == label_values.tolist()
  for i, rec in enumerate(out):
    assert rec.image.dtype == np.uint8 and rec.image.shape == (28, 28, 1)
    np.testing.assert_array_equal(rec.image[:, :, 0], pixels[i])
    assert (
      rec.content_sha256
      == hashlib.sha256(pixels[i].tobytes() + bytes([label_values[i]])).hexdigest()
    )


def test_mnist_compression_is_decided_by_magic_bytes_not_name(tmp_path):
  images, labels, pixels, _ = write_mnist(tmp_path, 3, gz=True)
  # Beam's FileSystems.open gunzips .gz files itself: the reader then sees plain
  # bytes under a .gz name. Some mirrors ship gzip data without the extension.
  plain_under_gz_name = lambda path: io.BytesIO(gzip.decompress(open(path, "rb").read()))
  assert mnist.check_files(images, labels, opener=plain_under_gz_name) == 3
  out = list(mnist.read_records(images, labels, "x", opener=plain_under_gz_name))
  np.testing.assert_array_equal(out[2].image[:, :, 0], pixels[2])
  renamed = tmp_path / "renamed"
  renamed.write_bytes(open(images, "rb").read())
  assert mnist.check_files(str(renamed), labels) == 3


def test_mnist_range_reads_equal_slices_of_full_read(tmp_path):
  n = 1100  # More than one 1024-record read.
  for gz in (True, False):
    images, labels, _, _ = write_mnist(tmp_path, n, gz, seed=1)
    for opener in (fileio.open_rb, non_seekable_opener):
      full = list(mnist.read_records(images, labels, "m", opener=opener))
      assert len(full) == n
      for start, stop in [(0, n), (3, 9), (1020, 1030), (1099, 1100), (50, 50), (1000, None)]:
        part = list(mnist.read_records(images, labels, "m", start, stop, opener=opener))
        expected = full[start:stop]
        assert [r.source_id for r in part] == [r.source_id for r in expected]
        assert all(np.array_equal(a.image, b.image) for a, b in zip(part, expected))
  with pytest.raises(ValueError):
    list(mnist.read_records(images, labels, "m", 1000, n + 1))


def test_mnist_label_above_9_is_rejected(tmp_path):
  images, labels, _, _ = write_mnist(tmp_path, 4, gz=True, labels=[7, 10, 3, 200])
  out = list(mnist.read_records(images, labels, "t.gz"))
  assert [r.label for r in out if isinstance(r, Record)] == [7, 3]
  assert out[1] == Reject(file="t.gz", index=1, reason="label byte 10 is not an MNIST class (0-9)")
  assert isinstance(out[3], Reject) and out[3].index == 3


def test_mnist_wrong_magic_names_file_found_and_expected(tmp_path):
  images, labels, _, _ = write_mnist(tmp_path, 2, gz=True)
  with pytest.raises(DataFormatError) as err:
    mnist.check_files(labels, images)  # Swapped.
  assert_one_line_naming(err, labels)
  assert "bad IDX magic 0x00000801" in str(err.value)
  assert "expected 2051 (images)" in str(err.value)
  bogus = tmp_path / "bogus"
  bogus.write_bytes(idx_bytes(0x1234, (2, 28, 28), bytes(2 * 784)))
  with pytest.raises(DataFormatError, match="0x00001234.*expected 2051"):
    mnist.check_files(str(bogus), labels)


def test_mnist_count_mismatch_names_both_files_and_counts(tmp_path):
  images, _, _, _ = write_mnist(tmp_path, 3, gz=False)
  _, labels, _, _ = write_mnist(tmp_path, 4, gz=False, prefix="other")
  with pytest.raises(DataFormatError) as err:
    mnist.check_files(images, labels)
  message = str(err.value)
  assert "\n" not in message
  assert images in message and labels in message and "3" in message and "4" in message
  with pytest.raises(DataFormatError):
    list(mnist.read_records(images, labels, "m"))


def test_mnist_truncated_or_corrupt_gzip_is_a_data_format_error(tmp_path):
  images, labels, _, _ = write_mnist(tmp_path, 20, gz=True)
  data = open(images, "rb").read()
  truncated = tmp_path / "truncated.gz"
  truncated.write_bytes(data[: len(data) // 2])
  corrupt = tmp_path / "corrupt.gz"
  corrupt.write_bytes(data[:40] + bytes(b ^ 0x5A for b in data[40:200]) + data[200:])
  bad_crc = tmp_path / "bad_crc.gz"
  bad_crc.write_bytes(data[:-8] + bytes(4) + data[-4:])
  for path in (truncated, corrupt, bad_crc):
    with pytest.raises(DataFormatError) as err:
      mnist.check_files(str(path), labels)
    assert_one_line_naming(err, path)
  with pytest.raises(DataFormatError) as err:
    list(mnist.read_records(str(truncated), labels, "m"))
  assert_one_line_naming(err, truncated)


def test_mnist_short_or_long_plain_file_is_a_data_format_error(tmp_path):
  images, labels, _, _ = write_mnist(tmp_path, 3, gz=False)
  data = open(images, "rb").read()
  short = tmp_path / "short"
  short.write_bytes(data[:-10])
  long = tmp_path / "long"
  long.write_bytes(data + b"\0")
  header_only = tmp_path / "header_only"
  header_only.write_bytes(data[:10])
  for path, words in [(short, "truncated"), (long, "1 unexpected byte"), (header_only, "header")]:
    with pytest.raises(DataFormatError, match=words) as err:
      mnist.check_files(str(path), labels)
    assert_one_line_naming(err, path)
  with pytest.raises(DataFormatError, match="image 2"):
    list(mnist.read_records(str(short), labels, "m"))


def test_mnist_images_must_be_28x28(tmp_path):
  path = tmp_path / "big"
  path.write_bytes(idx_bytes(2051, (1, 32, 32), bytes(1024)))
  _, labels, _, _ = write_mnist(tmp_path, 1, gz=False)
  with pytest.raises(DataFormatError, match="32x32"):
    mnist.check_files(str(path), labels)


def test_mnist_find_split_files():
  both = {
    "train-images-idx3-ubyte",
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte.gz",
  }
  assert mnist.find_split_files(both, MNIST_LAYOUT.splits["train"]) == (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte",
  )
  assert mnist.find_split_files(both, MNIST_LAYOUT.splits["test"]) == (
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte.gz",
  )
  with pytest.raises(DataFormatError) as err:
    mnist.find_split_files(
      {"t10k-images-idx3-ubyte.gz"}, MNIST_LAYOUT.splits["test"], directory="gs://b/mnist"
    )
  assert "gs://b/mnist/t10k-labels-idx1-ubyte" in str(err.value)


# --- image folders -----------------------------------------------------------


def encode(array_or_image, fmt, **kwargs):
  image = (
    array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
  )
  buf = io.BytesIO()
  image.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def load(tmp_path, data, size, name="cat/x.png", label=0):
  """Writes `data` to a file and loads it, failing on any escaping warning."""
  path = tmp_path / "img"
  path.write_bytes(data)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = imagefolder.load_image(str(path), name, label, size)
  assert not caught, [str(w.message) for w in caught]
  return out


def assert_rejected(out, *words):
  assert isinstance(out, Reject), out
  assert out.index is None and "\n" not in out.reason
  for word in words:
    assert word in out.reason


def test_list_split_class_folders():
  paths = [
    "dog/dog.2.jpg",
    "Cat/cat.1.JPG",
    "cat/a.jpeg",
    "dog/puppies/p.png",
    "bird/b.jpg",
    "cat/notes.txt",
    ".DS_Store",
    "cat/Thumbs.db",
    "cat/._cat.1.jpg",
    "dog/x.gif",
    "cat/y.BMP",
    "PetImages/Cat/1.jpg",
  ]
  candidates, rejects, skipped = imagefolder.list_split(paths, ["cat", "dog"])
  assert candidates == [
    ("Cat/cat.1.JPG", 0),
    ("cat/a.jpeg", 0),
    ("cat/y.BMP", 0),
    ("dog/dog.2.jpg", 1),
    ("dog/puppies/p.png", 1),
    ("dog/x.gif", 1),
  ]
  reasons = {r.file: r.reason for r in rejects}
  assert all(r.index is None for r in rejects)
  assert reasons["bird/b.jpg"] == "unknown class 'bird' (expected one of cat, dog)"
  assert "unknown class 'PetImages'" in reasons["PetImages/Cat/1.jpg"]
  # Files that are not data are skipped, not rejected: they never count against a split.
  skips = {r.file: r.reason for r in skipped}
  assert skips == {
    "cat/notes.txt": "notes or documents, not data",
    ".DS_Store": "hidden file, not data",
    "cat/Thumbs.db": "operating-system metadata, not data",
    "cat/._cat.1.jpg": "hidden file, not data",
  }
  assert len(candidates) + len(rejects) + len(skipped) == len(paths)


def test_list_split_flat_layout():
  paths = ["dog.45.jpg", "cat.1.jpg", "Cat.2.PNG", "bird.3.jpg", "readme.txt", "setup.exe"]
  candidates, rejects, skipped = imagefolder.list_split(paths, ["cat", "dog"])
  assert candidates == [("Cat.2.PNG", 0), ("cat.1.jpg", 0), ("dog.45.jpg", 1)]
  assert [(r.file, r.reason) for r in rejects] == [
    ("bird.3.jpg", "unknown class 'bird' (expected one of cat, dog)"),
    ("setup.exe", "not an image file (extension '.exe')"),
  ]
  assert [(r.file, r.reason) for r in skipped] == [("readme.txt", "notes or documents, not data")]


def test_load_image_record(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
  data = encode(rgb, "PNG")
  out = load(tmp_path, data, 20, name="cat/x.png", label=0)
  assert isinstance(out, Record)
  assert (out.source_id, out.label) == ("cat/x.png", 0)
  assert out.content_sha256 == hashlib.sha256(data).hexdigest()
  np.testing.assert_array_equal(out.image, rgb)  # Same size: no resampling.


def test_load_image_rejects_empty_truncated_and_garbage_files(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
  jpeg = encode(rgb, "JPEG", quality=90)
  assert_rejected(load(tmp_path, b"", 16, name="cat/empty.jpg"), "empty")
  assert_rejected(load(tmp_path, jpeg[: len(jpeg) // 2], 16), "cannot decode image", "truncated")
  assert ImageFile.LOAD_TRUNCATED_IMAGES is False
  garbage = load(tmp_path, b"this is not a jpeg" * 50, 16, name="dog/g.jpg")
  assert garbage == Reject(
    file="dog/g.jpg", index=None, reason="cannot decode image: not a recognised image format"
  )


def test_load_image_rejects_decompression_bombs(tmp_path, monkeypatch):
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
  # Pillow warns above the limit and raises above twice the limit; both reject.
  for side in (12, 20):
    data = encode(np.zeros((side, side, 3), np.uint8), "PNG")
    assert_rejected(load(tmp_path, data, 8), "decompression bomb")


def test_load_image_composites_alpha_over_white(tmp_path):
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[:, :4] = (255, 0, 0, 0)  # Transparent, red underneath.
  rgba[:, 4:6] = (0, 0, 255, 255)  # Opaque blue.
  rgba[:, 6:] = (0, 0, 0, 128)  # Half-transparent black.
  out = load(tmp_path, encode(rgba, "PNG"), 8)
  assert isinstance(out, Record)
  np.testing.assert_array_equal(out.image[:, :4], 255)
  np.testing.assert_array_equal(out.image[:, 4:6], np.broadcast_to([0, 0, 255], (8, 2, 3)))
  assert np.all(np.abs(out.image[:, 6:].astype(int) - 127) <= 1)
  # LA (grey + alpha) goes the same way.
  la = Image.fromarray(rgba[:, :, 3]).convert("L")
  la.putalpha(Image.fromarray(np.where(rgba[:, :, 3] == 0, 0, 255).astype(np.uint8)))
  out = load(tmp_path, encode(la, "PNG"), 8)
  np.testing.assert_array_equal(out.image[:, :4], 255)


def test_load_image_grayscale_and_16_bit(tmp_path):
  gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
  out = load(tmp_path, encode(gray, "PNG"), 8)
  assert out.image.shape == (8, 8, 3)
  for c in range(3):
    np.testing.assert_array_equal(out.image[:, :, c], gray)
  wide = np.array([[0, 257 * 128, 65535, 257 * 10]], dtype=np.uint16).repeat(4, axis=0)
  out = load(tmp_path, encode(Image.fromarray(wide), "PNG"), 4)
  np.testing.assert_array_equal(out.image[0, :, 0], [0, 128, 255, 10])


def test_load_image_palette_gif_first_frame(tmp_path):
  palette = [0, 0, 0, 10, 200, 30, 250, 240, 5] + [0] * (256 * 3 - 9)
  indices = np.array([[1, 2], [2, 1]], np.uint8).repeat(4, axis=0).repeat(4, axis=1)
  frame1 = Image.frombytes("P", (8, 8), indices.tobytes())
  frame1.putpalette(palette)
  frame2 = Image.frombytes("P", (8, 8), bytes([0] * 64))
  frame2.putpalette(palette)
  buf = io.BytesIO()
  frame1.save(buf, format="GIF", save_all=True, append_images=[frame2])
  out = load(tmp_path, buf.getvalue(), 8, name="dog/a.gif")
  assert isinstance(out, Record)
  np.testing.assert_array_equal(out.image[0, 0], [10, 200, 30])
  np.testing.assert_array_equal(out.image[0, 4], [250, 240, 5])
  np.testing.assert_array_equal(out.image[4, 0], [250, 240, 5])


def test_load_image_cmyk_jpeg(tmp_path):
  rgb = np.zeros((16, 16, 3), np.uint8)
  rgb[:] = (200, 40, 60)
  cmyk = Image.fromarray(rgb).convert("CMYK")
  out = load(tmp_path, encode(cmyk, "JPEG", quality=95), 16, name="cat/c.jpg")
  assert isinstance(out, Record) and out.image.shape == (16, 16, 3)
  assert np.all(np.abs(out.image.astype(int) - (200, 40, 60)) <= 8)


def test_load_image_resizes_shorter_side_and_centre_crops_deterministically(tmp_path):
  # 96 wide x 32 high: red | green | red thirds. Scaled to 48x16 the centre
  # 16x16 crop is exactly the green third (give or take the bicubic edge).
  wide = np.zeros((32, 96, 3), np.uint8)
  wide[:, :] = (255, 0, 0)
  wide[:, 32:64] = (0, 255, 0)
  data = encode(wide, "PNG")
  first = load(tmp_path, data, 16)
  second = load(tmp_path, data, 16)
  assert first.image.shape == (16, 16, 3) and first.image.dtype == np.uint8
  np.testing.assert_array_equal(first.image, second.image)
  np.testing.assert_array_equal(first.image[:, 2:14], np.broadcast_to([0, 255, 0], (16, 12, 3)))
  # Tall: same picture turned; the crop is the middle band of rows.
  tall = load(tmp_path, encode(np.ascontiguousarray(wide.transpose(1, 0, 2)), "PNG"), 16)
  np.testing.assert_array_equal(tall.image[2:14], np.broadcast_to([0, 255, 0], (12, 16, 3)))
  # Upscaling a small non-square image works the same way.
  small = load(tmp_path, encode(wide[:6, :18], "PNG"), 24)
  assert small.image.shape == (24, 24, 3)


def test_load_image_applies_exif_orientation(tmp_path):
  # Stored 32 wide x 16 high, left half red; orientation 6 = shown rotated 90
  # degrees clockwise, so upright it is 16 wide x 32 high with red on top.
  stored = np.zeros((16, 32, 3), np.uint8)
  stored[:, :16] = (255, 0, 0)
  stored[:, 16:] = (0, 0, 255)
  exif = Image.Exif()
  exif[0x0112] = 6
  out = load(tmp_path, encode(stored, "JPEG", quality=95, exif=exif.tobytes()), 16)
  assert out.image[2, 2, 0] > 200 and out.image[2, 2, 2] < 50
  assert out.image[13, 2, 2] > 200 and out.image[13, 2, 0] < 50


def test_load_image_reads_through_the_given_opener():
  data = encode(np.full((4, 4, 3), 9, np.uint8), "PNG")
  out = imagefolder.load_image(
    "gs://b/train/cat/1.png",
    "cat/1.png",
    0,
    4,
    opener=memory_opener({"gs://b/train/cat/1.png": data}),
  )
  assert out.source_id == "cat/1.png" and int(out.image.max()) == 9


def test_load_image_keeps_pillow_warnings_quiet(tmp_path):
  # A cut-off EXIF block makes Pillow warn "Corrupt EXIF data"; the pixels are
  # fine, so the result is a Record and the job log stays clean (`load` fails
  # the test on any escaping warning).
  exif = Image.Exif()
  exif[0x0112] = 6
  data = encode(np.full((8, 8, 3), 50, np.uint8), "JPEG", exif=exif.tobytes()[:14])
  out = load(tmp_path, data, 8)
  assert isinstance(out, Record) and out.image.shape == (8, 8, 3)


def test_readers_accept_beams_file_system_opener(tmp_path):
  # The pipeline passes FileSystems.open, whose file objects differ from io's:
  # `seekable` is a property, and .gz files come back already gunzipped.
  from apache_beam.io.filesystems import FileSystems

  path = tmp_path / "b.bin"
  write_cifar(path, [i % 10 for i in range(20)])
  via_beam = list(cifar10.read_records(str(path), "b", 12, 15, opener=FileSystems.open))
  direct = list(cifar10.read_records(str(path), "b"))[12:15]
  assert [r.content_sha256 for r in via_beam] == [r.content_sha256 for r in direct]
  images, labels, pixels, _ = write_mnist(tmp_path, 30, gz=True)
  assert mnist.check_files(images, labels, opener=FileSystems.open) == 30
  out = list(mnist.read_records(images, labels, "m", 25, 30, opener=FileSystems.open))
  np.testing.assert_array_equal(out[0].image[:, :, 0], pixels[25])
  truncated = tmp_path / "t.gz"
  truncated.write_bytes(open(images, "rb").read()[:-3000])
  with pytest.raises(DataFormatError) as err:
    mnist.check_files(str(truncated), labels, opener=FileSystems.open)
  assert_one_line_naming(err, truncated)
