"""Tests for preprocess/download.py: fetch, verify, extract safely, arrange.

The real archives cannot be fetched here (no internet), so a real HTTP server on
127.0.0.1 serves small archives the tests build in the official layouts, with
digests the tests compute. Hostile archives (`..`, absolute paths, links,
devices) are built member by member with tarfile/zipfile, exactly as an attacker
would, and the tests check that nothing at all lands on disk.
"""

import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import pathlib
import re
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import types
import zipfile

from PIL import Image
import pytest

from preprocess import datasets
from preprocess import download
from preprocess import extract
from preprocess.datasets import catdog as catdog_spec
from preprocess.datasets import cifar10
from preprocess.download import DownloadError
from preprocess.download import RemoteFile

ROOT = pathlib.Path(__file__).resolve().parent.parent
MNIST_NAMES = (
  "train-images-idx3-ubyte.gz",
  "train-labels-idx1-ubyte.gz",
  "t10k-images-idx3-ubyte.gz",
  "t10k-labels-idx1-ubyte.gz",
)
IMAGES_PER_CLASS = 120


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
  # A proxy configured on the host must not intercept requests to the local server.
  monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
  monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server(tmp_path):
  """A real HTTP server on 127.0.0.1 serving `root`; `requests` lists GET paths."""
  root = tmp_path / "www"
  root.mkdir()
  requests = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, directory=str(root), **kwargs)

    def do_GET(self):
      requests.append(self.path)
      super().do_GET()

    def log_message(self, *args):
      pass

  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  # shutdown() waits for the next poll; the default 0.5 s would dominate the run.
  thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
  thread.start()
  yield types.SimpleNamespace(
    root=root, url=f"http://127.0.0.1:{httpd.server_port}", requests=requests
  )
  httpd.shutdown()
  httpd.server_close()
  thread.join()


def remote(server, served_name, filename=None, algorithm="sha256", data=None):
  """A RemoteFile for a served file, with its real size and digest (or `data`'s)."""
  data = (server.root / served_name).read_bytes() if data is None else data
  digest = {algorithm: hashlib.new(algorithm, data).hexdigest()}
  return RemoteFile(
    filename or served_name, (f"{server.url}/{served_name}",), size=len(data), **digest
  )


def files_under(path):
  return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


# --- archives in the official layouts ------------------------------------------


def cifar_members():
  """{member name: bytes} of a tiny cifar-10-binary.tar.gz (2 records per batch)."""
  names = "\n".join(list(datasets.get("cifar10").class_names)) + "\n"
  members = {
    "cifar-10-batches-bin/batches.meta.txt": names.encode(),
    "cifar-10-batches-bin/readme.html": b"<html></html>",
  }
  for i, name in enumerate(datasets.get("cifar10").layout.file_names()[:-1]):
    records = b"".join(bytes([(i + r) % 10]) + bytes([i * 16 + r]) * 3072 for r in range(2))
    members[f"cifar-10-batches-bin/{name}"] = records
  return members


def write_tar(path, members, extra=()):
  """Writes a .tar.gz: a folder entry, `members` ({name: bytes}), then `extra` TarInfos."""
  with tarfile.open(path, "w:gz") as tar:
    folder = tarfile.TarInfo("cifar-10-batches-bin")
    folder.type, folder.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(folder)
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    for info, data in extra:
      tar.addfile(info, io.BytesIO(data) if data is not None else None)
  return path


def mnist_files(root):
  """Writes the four tiny gzipped IDX files (3 images) under `root`; returns {name: bytes}."""
  images = struct.pack(">IIII", 2051, 3, 28, 28) + bytes(range(256)) * 9 + bytes(48)
  labels = struct.pack(">II", 2049, 3) + bytes([7, 2, 1])
  out = {}
  for name in MNIST_NAMES:
    data = gzip.compress(images if "images" in name else labels, mtime=0)
    (root / name).write_bytes(data)
    out[name] = data
  return out


def tiny_jpeg(seed):
  buf = io.BytesIO()
  Image.new("RGB", (8, 8), (seed % 256, 40, 90)).save(buf, format="JPEG")
  return buf.getvalue()


def catdog_zip(path):
  """A small kagglecatsanddogs zip: PetImages/{Cat,Dog}/N.jpg, a corrupt file, Thumbs.db.

  Returns {(class, name): bytes} of every image, the corrupt one included.
  """
  images = {}
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("readme[1].txt", b"Kaggle cats and dogs")
    for folder in ("Cat", "Dog"):
      for n in range(IMAGES_PER_CLASS):
        data = tiny_jpeg(n)
        zf.writestr(f"PetImages/{folder}/{n}.jpg", data)
        images[(folder.lower(), f"{n}.jpg")] = data
      # The real archive has 0-byte "JPEGs"; they must be moved like any other.
      zf.writestr(f"PetImages/{folder}/666.jpg", b"")
      images[(folder.lower(), "666.jpg")] = b""
      zf.writestr(f"PetImages/{folder}/Thumbs.db", b"\xd0\xcf\x11\xe0 thumbnail cache")
  return images


def installed_catdog(raw):
  """{(class, name): (split, bytes)} of the images under raw/catdog/{train,test}."""
  found = {}
  for split in ("train", "test"):
    for path in (raw / "catdog" / split).glob("*/*"):
      key = (path.parent.name, path.name)
      assert key not in found, f"{key} is in two splits"
      found[key] = (split, path.read_bytes())
  return found


# --- good downloads --------------------------------------------------------------


def test_cifar10_download_extracts_the_official_layout(server, tmp_path):
  members = cifar_members()
  write_tar(server.root / "cifar-10-binary.tar.gz", members)
  raw = tmp_path / "raw"

  paths = download.download(
    "cifar10", raw, sources=[remote(server, "cifar-10-binary.tar.gz")], log=lambda line: None
  )

  batches = raw / "cifar10" / "cifar-10-batches-bin"
  assert paths == [batches / n for n in datasets.get("cifar10").layout.file_names()]
  for name, data in members.items():
    assert (raw / "cifar10" / name).read_bytes() == data
  # The reader the Beam job uses accepts what was extracted.
  assert cifar10.read_class_names(batches / "batches.meta.txt") == list(
    datasets.get("cifar10").class_names
  )
  test_batch = batches / "test_batch.bin"
  assert cifar10.count_records(test_batch, test_batch.stat().st_size) == 2
  # The verified archive is kept; no temporary download or extraction folder is.
  assert files_under(raw) == sorted(
    ["cifar10/cifar-10-binary.tar.gz"] + [f"cifar10/{n}" for n in members]
  )
  assert not [p for p in raw.rglob(".*")]


def test_mnist_download_keeps_the_gzipped_files(server, tmp_path):
  served = mnist_files(server.root)
  raw = tmp_path / "raw"

  paths = download.download(
    "mnist", raw, sources=[remote(server, n) for n in MNIST_NAMES], log=lambda line: None
  )

  assert paths == [raw / "mnist" / n for n in MNIST_NAMES]
  for name, data in served.items():
    assert (raw / "mnist" / name).read_bytes() == data
  labels = gzip.decompress((raw / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
  assert labels[8:] == b"\x07\x02\x01"
  assert files_under(raw) == sorted(f"mnist/{n}" for n in MNIST_NAMES)


def test_a_failing_mirror_falls_back_to_the_next_url(server, tmp_path):
  mnist_files(server.root)
  name = MNIST_NAMES[3]
  good = remote(server, name)
  source = RemoteFile(
    name, (f"{server.url}/gone/{name}", f"{server.url}/{name}"), sha256=good.sha256, size=good.size
  )
  logs = []

  path = download._ensure_file(source, tmp_path, force=False, log=logs.append)

  assert path.read_bytes() == (server.root / name).read_bytes()
  assert server.requests == [f"/gone/{name}", f"/{name}"]
  assert any("HTTP 404" in line and "trying the next URL" in line for line in logs)


def test_progress_lines_report_bytes_and_percent(server, tmp_path, monkeypatch):
  (server.root / "blob.bin").write_bytes(os.urandom(3 * download._CHUNK_BYTES))
  monkeypatch.setattr(download, "_PROGRESS_SECONDS", 0.0)
  logs = []

  download._ensure_file(remote(server, "blob.bin"), tmp_path, force=False, log=logs.append)

  assert any(re.search(r"blob\.bin: \d+\.\d of 3\.0 MiB \(\d+%\)", line) for line in logs), logs


def test_catdog_split_is_deterministic_disjoint_and_moves_every_image(server, tmp_path):
  images = catdog_zip(server.root / "kagglecatsanddogs_5340.zip")
  source = [remote(server, "kagglecatsanddogs_5340.zip")]

  runs = []
  for run in ("a", "b"):
    raw = tmp_path / run
    paths = download.download("catdog", raw, sources=source, log=lambda line: None)
    assert paths == [raw / "catdog" / "train", raw / "catdog" / "test"]
    runs.append(installed_catdog(raw))

  first, second = runs
  assert first == second  # Same split, same bytes, in two independent runs.
  # Every image (the corrupt ones too) is in exactly one split, unchanged, in its class.
  assert {key: data for key, (_, data) in first.items()} == images
  assert {key: split for key, (split, _) in first.items()} == {
    key: catdog_spec.split_of(*key) for key in images
  }
  test_share = sum(split == "test" for split, _ in first.values()) / len(first)
  assert 0.05 <= test_share <= 0.15, test_share
  for class_name in ("cat", "dog"):
    assert {split for (c, _), (split, _) in first.items() if c == class_name} == {"train", "test"}
  # Moved, not copied: no image is left in PetImages; Thumbs.db and the readme
  # stay outside the split folders the pipeline reads.
  raw = tmp_path / "a"
  others = [p for p in files_under(raw / "catdog") if not p.startswith(("train/", "test/"))]
  assert others == [
    "PetImages/Cat/Thumbs.db",
    "PetImages/Dog/Thumbs.db",
    "kagglecatsanddogs_5340.zip",
    "readme[1].txt",
  ]


def test_catdog_split_is_a_fixed_function_of_class_and_name():
  # Pinned so that a change to the rule (which would reshuffle everyone's test
  # set) fails here, not silently.
  assert [catdog_spec.split_of("cat", f"{n}.jpg") for n in range(12)].count("test") == sum(
    int.from_bytes(hashlib.sha256(f"cat/{n}.jpg".encode()).digest()[:8], "big") % 100 < 10
    for n in range(12)
  )
  assert catdog_spec.split_of("cat", "1.jpg") == catdog_spec.split_of("cat", "1.jpg")


# --- verification ----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_tampered_archive_is_deleted_and_nothing_is_extracted(server, tmp_path, algorithm):
  good = write_tar(tmp_path / "good.tar.gz", cifar_members()).read_bytes()
  tampered = bytearray(good)
  tampered[len(tampered) // 2] ^= 0xFF  # Same size: only the digest can tell.
  (server.root / "cifar-10-binary.tar.gz").write_bytes(bytes(tampered))
  source = remote(server, "cifar-10-binary.tar.gz", algorithm=algorithm, data=good)
  raw = tmp_path / "raw"

  with pytest.raises(DownloadError) as excinfo:
    download.download("cifar10", raw, sources=[source], log=lambda line: None)

  message = str(excinfo.value)
  assert "\n" not in message
  assert str(raw / "cifar10" / "cifar-10-binary.tar.gz") in message
  assert f"expected {hashlib.new(algorithm, good).hexdigest()}" in message
  assert f"got {hashlib.new(algorithm, tampered).hexdigest()}" in message
  assert files_under(raw) == []  # No extracted files, no download, no .part file.


def test_wrong_size_is_refused_before_the_body_is_kept(server, tmp_path):
  mnist_files(server.root)
  name = MNIST_NAMES[0]
  real = remote(server, name)
  source = RemoteFile(name, real.urls, sha256=real.sha256, size=real.size + 1)

  with pytest.raises(DownloadError, match=rf"{re.escape(name)}.*expected {real.size + 1}"):
    download.download("mnist", tmp_path / "raw", sources=[source], log=lambda line: None)
  assert files_under(tmp_path / "raw") == []


def test_remote_file_rejects_malformed_entries():
  with pytest.raises(ValueError, match="malformed sha256"):
    RemoteFile("a.gz", ("https://x/a.gz",), sha256="abc")
  with pytest.raises(ValueError, match="sha256 or md5"):
    RemoteFile("a.gz", ("https://x/a.gz",))
  with pytest.raises(ValueError, match="plain file name"):
    RemoteFile("../a.gz", ("https://x/a.gz",), md5="0" * 32)


def test_default_sources_are_https_with_well_formed_digests():
  # The seed data sets' files (and their sizes, all published); every registered
  # data set's sources are checked the same way otherwise.
  expected_names = {
    "cifar10": ["cifar-10-binary.tar.gz"],
    "mnist": list(MNIST_NAMES),
    "catdog": ["kagglecatsanddogs_5340.zip"],
  }
  sources = {name: datasets.get(name).sources for name in datasets.names()}
  assert set(expected_names) <= set(sources)
  for dataset, files in sources.items():
    if dataset in expected_names:
      assert sorted(f.filename for f in files) == sorted(expected_names[dataset])
      assert all(isinstance(f.size, int) for f in files), dataset
    for f in files:
      assert f.urls and all(
        u.startswith("https://") and u.endswith("/" + f.filename) for u in f.urls
      ), f
      assert re.fullmatch(r"[0-9a-f]{64}", f.sha256), f
      assert f.md5 is None or re.fullmatch(r"[0-9a-f]{32}", f.md5), f
      assert f.size is None or (isinstance(f.size, int) and f.size > 0), f
  # The MD5 published on the CIFAR-10 page is checked as well.
  assert sources["cifar10"][0].md5 == "c32a1d4ab5d03f1284b67883e8d87530"
  tfds_mirror = "https://storage.googleapis.com/cvdf-datasets/mnist/"
  assert all(f.urls[0].startswith(tfds_mirror) for f in sources["mnist"])


# --- unsafe archives -------------------------------------------------------------


def _tarinfo(name, kind, target=""):
  info = tarfile.TarInfo(name)
  if kind == "file":
    info.size = 4
  elif kind == "symlink":
    info.type, info.linkname = tarfile.SYMTYPE, target
  elif kind == "hardlink":
    info.type, info.linkname = tarfile.LNKTYPE, target
  elif kind == "fifo":
    info.type = tarfile.FIFOTYPE
  return info


def hostile_tar(path, name, kind, target=""):
  """A tar.gz with an ordinary file, the hostile member, then a file through it."""
  with tarfile.open(path, "w:gz") as tar:
    tar.addfile(_tarinfo("ok.txt", "file"), io.BytesIO(b"fine"))
    tar.addfile(_tarinfo(name, kind, target), io.BytesIO(b"evil") if kind == "file" else None)
    if kind in ("symlink", "hardlink"):
      tar.addfile(_tarinfo(f"{name}/evil", "file"), io.BytesIO(b"evil"))
  return path


def hostile_zip(path, name, kind, target=""):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("ok.txt", b"fine")
    info = zipfile.ZipInfo(name)
    if kind == "symlink":
      info.external_attr = (stat.S_IFLNK | 0o777) << 16
      zf.writestr(info, target)
      zf.writestr(f"{name}/evil", b"evil")
    else:
      zf.writestr(info, b"evil")
  return path


# (format, kind, member name, reason the message must give)
HOSTILE = [
  ("tar", "dotdot", "../evil", "'..' in path"),
  ("tar", "dotdot-deep", "a/../../evil", "'..' in path"),
  ("tar", "backslash", "a\\..\\..\\evil", "'..' in path"),
  ("tar", "absolute", None, "absolute path"),
  ("tar", "symlink", "link", "symlink"),
  ("tar", "hardlink", "link", "hard link"),
  ("tar", "fifo", "pipe", "device, fifo"),
  ("zip", "dotdot", "../evil", "'..' in path"),
  ("zip", "absolute", None, "absolute path"),
  ("zip", "symlink", "link", "symlink"),
]


@pytest.mark.parametrize("fmt,kind,name,reason", HOSTILE, ids=[f"{h[0]}-{h[1]}" for h in HOSTILE])
def test_unsafe_archive_is_refused_and_nothing_is_written(tmp_path, fmt, kind, name, reason):
  outside = tmp_path / "outside"
  outside.mkdir()
  if name is None:  # Absolute: straight into the folder an attacker wants.
    name = str(outside / "evil")
  member_kind = {"symlink": "symlink", "hardlink": "hardlink", "fifo": "fifo"}.get(kind, "file")
  archive = tmp_path / f"hostile.{'tar.gz' if fmt == 'tar' else 'zip'}"
  (hostile_tar if fmt == "tar" else hostile_zip)(archive, name, member_kind, str(outside))
  dest = tmp_path / "dest" / "cifar10"

  with pytest.raises(DownloadError) as excinfo:
    extract.extract_archive(archive, dest)

  message = str(excinfo.value)
  assert "\n" not in message and repr(name) in message and str(archive) in message
  assert f"unsafe member {name!r}: {reason}" in message and "nothing extracted" in message
  assert list(dest.iterdir()) == []  # Not even ok.txt, not even a temporary folder.
  assert list(outside.iterdir()) == []
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["outside", "dest", archive.name])


def test_download_refuses_an_archive_with_a_dotdot_member(server, tmp_path):
  evil = tarfile.TarInfo("cifar-10-batches-bin/../../evil")
  evil.size = 4
  write_tar(server.root / "cifar-10-binary.tar.gz", cifar_members(), extra=[(evil, b"evil")])
  raw = tmp_path / "raw"

  with pytest.raises(DownloadError, match=r"unsafe member 'cifar-10-batches-bin/\.\./\.\./evil'"):
    download.download(
      "cifar10", raw, sources=[remote(server, "cifar-10-binary.tar.gz")], log=lambda line: None
    )

  # Only the verified archive is on disk; nothing was extracted, in raw or above it.
  assert files_under(tmp_path) == [
    "raw/cifar10/cifar-10-binary.tar.gz",
    "www/cifar-10-binary.tar.gz",
  ]


def test_extract_archive_does_not_overwrite_unless_forced(tmp_path):
  archive = write_tar(tmp_path / "cifar-10-binary.tar.gz", cifar_members())
  dest = tmp_path / "cifar10"
  (dest / "cifar-10-batches-bin").mkdir(parents=True)
  (dest / "cifar-10-batches-bin" / "mine.txt").write_text("keep")

  with pytest.raises(DownloadError, match="already exists"):
    extract.extract_archive(archive, dest)
  assert files_under(dest) == ["cifar-10-batches-bin/mine.txt"]

  assert extract.extract_archive(archive, dest, force=True) == [dest / "cifar-10-batches-bin"]
  assert "cifar-10-batches-bin/data_batch_1.bin" in files_under(dest)
  assert "cifar-10-batches-bin/mine.txt" not in files_under(dest)


# --- idempotence -----------------------------------------------------------------


def test_second_call_does_not_download_and_force_does(server, tmp_path):
  write_tar(server.root / "cifar-10-binary.tar.gz", cifar_members())
  source = [remote(server, "cifar-10-binary.tar.gz")]
  raw = tmp_path / "raw"
  quiet = lambda line: None

  first = download.download("cifar10", raw, sources=source, log=quiet)
  assert len(server.requests) == 1
  logs = []
  assert download.download("cifar10", raw, sources=source, log=logs.append) == first
  assert len(server.requests) == 1
  assert any("already in" in line for line in logs)

  # Batches deleted, archive kept: re-extracted from the verified archive, no request.
  for path in first:
    path.unlink()
  (raw / "cifar10" / "cifar-10-batches-bin" / "readme.html").unlink()
  (raw / "cifar10" / "cifar-10-batches-bin").rmdir()
  download.download("cifar10", raw, sources=source, log=quiet)
  assert len(server.requests) == 1 and all(p.is_file() for p in first)

  first[0].write_bytes(b"damaged")
  download.download("cifar10", raw, sources=source, force=True, log=quiet)
  assert len(server.requests) == 2
  assert first[0].read_bytes() == cifar_members()["cifar-10-batches-bin/data_batch_1.bin"]


def test_partial_install_is_refused_before_downloading(server, tmp_path):
  catdog_zip(server.root / "kagglecatsanddogs_5340.zip")
  raw = tmp_path / "raw"
  (raw / "catdog" / "train" / "cat").mkdir(parents=True)

  with pytest.raises(DownloadError, match=r"train: exists but test/ does not.*--force"):
    download.download(
      "catdog", raw, sources=[remote(server, "kagglecatsanddogs_5340.zip")], log=lambda line: None
    )
  assert server.requests == []


# --- command line ----------------------------------------------------------------


def run_cli(*args):
  env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
  return subprocess.run(
    [sys.executable, "-m", "preprocess.download", *map(str, args)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )


def closed_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_cli_unreachable_url_exits_nonzero_with_one_line(tmp_path):
  port = closed_port()
  result = run_cli(
    "--dataset",
    "mnist",
    "--raw-dir",
    tmp_path / "raw",
    "--mirror",
    f"http://127.0.0.1:{port}/mnist",
  )

  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and result.stderr.splitlines()[-1] == errors[0]
  assert f"127.0.0.1:{port}/mnist/train-images-idx3-ubyte.gz: cannot connect" in errors[0]
  assert files_under(tmp_path) == []


def test_cli_usage_errors_and_help():
  bad = run_cli("--dataset", "imagenet", "--raw-dir", "x")
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
  assert "invalid choice" in bad.stderr
  shown = run_cli("--help")
  assert shown.returncode == 0 and "--force" in shown.stdout and "--mirror" in shown.stdout


def test_cli_downloads_and_then_skips(server, tmp_path, monkeypatch, capsys):
  mnist_files(server.root)
  local = dataclasses.replace(
    datasets.get("mnist"), sources=tuple(remote(server, n) for n in MNIST_NAMES)
  )
  monkeypatch.setitem(datasets.SPECS._entries, "mnist", local)  # this test's stand-in
  raw = tmp_path / "raw"

  assert download.main(["--dataset", "mnist", "--raw-dir", str(raw)]) == 0
  assert download.main(["--dataset", "mnist", "--raw-dir", str(raw)]) == 0

  assert len(server.requests) == 4
  assert files_under(raw) == sorted(f"mnist/{n}" for n in MNIST_NAMES)
  out, err = capsys.readouterr()
  assert out.count("mnist: 4 paths ready") == 2
  assert "already in" in err and "error" not in err


def test_download_takes_a_raw_dir_with_pattern_characters_literally(server, tmp_path):
  served = mnist_files(server.root)
  (tmp_path / "r1" / "mnist").mkdir(parents=True)  # What "r[1]" would match as a pattern.
  raw = tmp_path / "r[1]"

  paths = download.download(
    "mnist", raw, sources=[remote(server, n) for n in MNIST_NAMES], log=lambda line: None
  )

  assert paths == [raw / "mnist" / n for n in MNIST_NAMES]
  assert {p.name: p.read_bytes() for p in paths} == served
  assert files_under(tmp_path / "r1") == []
