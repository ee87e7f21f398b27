"""Fetches the official archives of each registered data set into the raw-data layout.

Step zero of the data flow, for machines with internet: official archives ->
checksum-verified, safely extracted files under RAW in the layout the readers
expect (each data set's spec in preprocess/datasets/ names its sources and
layout, e.g. `RAW/cifar10/cifar-10-batches-bin/`, `RAW/mnist/*-ubyte.gz`,
`RAW/catdog/{train,test}/{cat,dog}/`) -> pipeline/plan.py lists them -> the
Beam job writes shards. Without internet, preprocess/sample_data.py writes the
same layout from generated images.

Every download goes to a hidden temporary file next to its final name, is checked
against the size and digests recorded in the spec's `sources`, and only then renamed, so a
file under its final name is always a verified one. Archives are checked member
by member before anything is extracted (no absolute paths, no `..`, no links or
devices) and are extracted into a hidden temporary folder that is renamed into
place, so an interrupted run never leaves a half-extracted data set that looks
complete. Archives are kept after extraction: pipeline/plan.py re-extracts
the CIFAR-10 one if its batches folder is deleted, and `--force` reuses nothing.

Usage:
  python -m preprocess.download --dataset {NAME,all} --raw-dir DIR [--force]
"""

import argparse
import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import math
import os
import pathlib
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib

from preprocess import cli
from preprocess import datasets
from preprocess import hashing
from preprocess.errors import DataFormatError

_CHUNK_BYTES = 1 << 20
_PROGRESS_SECONDS = 5.0
_TIMEOUT_SECONDS = 60
# One hour: the largest archive (cat/dog, about 800 MB) needs 0.25 MB/s to make it.
DEFAULT_DEADLINE_SECONDS = 3600.0
_USER_AGENT = "cnn-pipeline-preprocess-download/1.0 (Python urllib)"
_DIGEST_LENGTHS = {"sha256": 64, "md5": 32}


class DownloadError(DataFormatError):
  """A file could not be fetched, failed verification, or is an unsafe archive.

  Subclasses `DataFormatError` so that callers which already print those as one
  line (the Beam driver calls `extract_archive`) handle these too. The message is
  `<path or URL>: <problem>` on a single line.
  """

  def __init__(self, path, problem):
    super().__init__(path, " ".join(str(problem).splitlines()))


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """One file to fetch and how to recognise it.

  Attributes:
    filename: Name to store it under in the data set's folder (a plain name).
    urls: Where to fetch it, tried in order until one gives a verified file.
    sha256: Expected SHA-256, lowercase hex; at least one digest is required.
    md5: Expected MD5, lowercase hex; checked too when given.
    size: Expected size in bytes, or None if unknown.
  """

  filename: str
  urls: tuple
  sha256: str | None = None
  md5: str | None = None
  size: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "urls", tuple(self.urls))
    if not self.urls:
      raise ValueError(f"{self.filename}: no URLs")
    name = self.filename
    if not name or name in (".", "..") or "/" in name or "\\" in name:
      raise ValueError(f"filename must be a plain file name, got {name!r}")
    if not self.digests():
      raise ValueError(f"{name}: give a sha256 or md5 digest")
    for algorithm, digest in self.digests().items():
      if not re.fullmatch(f"[0-9a-f]{{{_DIGEST_LENGTHS[algorithm]}}}", digest):
        raise ValueError(f"{name}: malformed {algorithm} digest {digest!r}")

  def digests(self):
    """The expected digests given, {algorithm: lowercase hex}."""
    return {a: d for a, d in (("sha256", self.sha256), ("md5", self.md5)) if d is not None}


def mirrored(filename, bases, **checks):
  return RemoteFile(filename, tuple(base + filename for base in bases), **checks)


def with_mirror(files, base_url):
  """Returns `files` fetched from `base_url`/<filename> only, same checks.

  For sites that keep the official archives on an internal server: the recorded
  digests still decide whether a file is accepted.
  """
  base = base_url if base_url.endswith("/") else base_url + "/"
  return [dataclasses.replace(f, urls=(base + f.filename,)) for f in files]


def _log_stderr(message):
  print(message, file=sys.stderr, flush=True)


def download(
  dataset,
  raw_dir,
  sources=None,
  force=False,
  log=_log_stderr,
  deadline_seconds=DEFAULT_DEADLINE_SECONDS,
):
  """Fetches, verifies and installs one data set under `raw_dir`/`dataset`.

  Does nothing (no network) when the data set's files are already in place,
  unless `force`. An archive already downloaded and matching its digests is
  extracted again without fetching it. What "in place" means and how the
  downloaded files become the raw layout is the data set's spec
  (preprocess/datasets/).

  Args:
    dataset: A registered data set name (`datasets.names()`).
    raw_dir: The raw data root (holds one folder per data set).
    sources: RemoteFiles to fetch instead of the spec's (other URLs,
      e.g. `with_mirror`, or test files with their own digests).
    force: Download again and replace what is installed.
    log: Callable taking one progress line (default: print to stderr).
    deadline_seconds: Give up when the downloads of this call have not
      finished after this long (a server that trickles never times out a read).

  Returns:
    The installed paths the spec's layout names (e.g. the seven CIFAR-10
    batch files, the four MNIST files, the cat/dog `train` and `test` folders).

  Raises:
    DownloadError: A file could not be fetched or verified, an archive is
      unsafe or lacks expected files, or a partial install is in the way.
    ValueError: Unknown data set.
  """
  spec = datasets.get(dataset)
  files = list(spec.sources if sources is None else sources)
  root = pathlib.Path(raw_dir) / dataset
  outputs = spec.layout.installed_paths(root, files)
  if not force and all(p.exists() for p in outputs):
    log(f"{dataset}: already in {root}, not downloading (use --force to replace)")
    return outputs
  if not force:
    partial = spec.layout.partial_install(root)
    if partial is not None:
      raise DownloadError(*partial)
  root.mkdir(parents=True, exist_ok=True)
  deadline = _Deadline(deadline_seconds)
  local = [_ensure_file(f, root, force, log, deadline) for f in files]
  (spec.install or spec.layout.install)(local, root, log)
  log(f"{dataset}: ready in {root}")
  return outputs


# --- fetching and verifying --------------------------------------------------


def _ensure_file(remote, root, force, log, deadline=None):
  """Returns the local path of `remote`, verified, fetching it if needed."""
  deadline = deadline or _Deadline(DEFAULT_DEADLINE_SECONDS)
  path = root / remote.filename
  if path.exists() and not force:
    problem = _mismatch(remote, path.stat().st_size, hashing.file_digests(path, remote.digests()))
    if problem is None:
      log(f"{path}: already downloaded, checksum ok")
      return path
    log(f"{path}: {problem}; downloading it again")
  errors = []
  for i, url in enumerate(remote.urls):
    try:
      _fetch(remote, url, path, log, deadline)
      return path
    except DownloadError as e:
      errors.append(e)
      if i + 1 < len(remote.urls):
        log(f"{e}; trying the next URL")
  if len(errors) == 1:
    raise errors[0]
  raise DownloadError(path, f"all {len(errors)} URLs failed; last: {errors[-1]}")


def _fetch(remote, url, path, log, deadline):
  """Downloads `url` to a temporary file beside `path`, verifies it, renames it."""
  fd, tmp = tempfile.mkstemp(prefix=f".{remote.filename}.", suffix=".part", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as out:
      size, digests = _copy_url(remote, url, path, out, log, deadline)
    problem = _mismatch(remote, size, digests)
    if problem is not None:
      raise DownloadError(path, f"{problem} (fetched from {url}; download deleted)")
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only.
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def _copy_url(remote, url, path, out, log, deadline):
  """Streams `url` into `out`, hashing as it goes; returns (size, digests)."""
  hashers = {a: hashlib.new(a) for a in remote.digests()}
  request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
  log(f"{path}: downloading {url}")
  try:
    with urllib.request.urlopen(request, timeout=deadline.timeout()) as response:
      length = response.headers.get("Content-Length")
      total = int(length) if length and length.isdigit() else None
      # Fail before fetching ~800 MB that cannot match.
      if remote.size is not None and total is not None and total != remote.size:
        raise DownloadError(
          path, f"{url} serves {total} bytes, expected {remote.size} (the file changed upstream?)"
        )
      start = last = time.monotonic()
      size = 0
      while True:
        deadline.check(url, size)
        # read1: whatever one receive brings, so a trickle still reaches the
        # deadline check (read(n) would wait for all n bytes).
        chunk = response.read1(_CHUNK_BYTES)
        if not chunk:
          break
        out.write(chunk)
        for h in hashers.values():
          h.update(chunk)
        size += len(chunk)
        now = time.monotonic()
        if now - last >= _PROGRESS_SECONDS:
          last = now
          log(f"{path.name}: {_progress(size, total or remote.size, now - start)}")
  except urllib.error.HTTPError as e:
    raise DownloadError(url, f"HTTP {e.code} {e.reason}") from None
  except (OSError, urllib.error.URLError) as e:
    deadline.check(url, None)  # A read cut short by the deadline says so.
    if isinstance(e, urllib.error.URLError):
      raise DownloadError(url, f"cannot connect: {e.reason}") from None
    raise DownloadError(url, f"download failed: {type(e).__name__}: {e}") from None
  except http.client.HTTPException as e:
    raise DownloadError(url, f"download failed: {type(e).__name__}: {e}") from None
  log(f"{path.name}: {size / 2**20:.1f} MiB in {time.monotonic() - start:.1f} s")
  return size, {a: h.hexdigest() for a, h in hashers.items()}


class _Deadline:
  """The overall deadline of one download() call, and each read's timeout within it."""

  def __init__(self, seconds):
    self.seconds = seconds
    self._end = time.monotonic() + seconds

  def remaining(self):
    return self._end - time.monotonic()

  def timeout(self):
    """Socket timeout for the next connect or read: at most _TIMEOUT_SECONDS, never past the end."""
    return max(0.05, min(_TIMEOUT_SECONDS, self.remaining()))

  def check(self, url, size):
    if self.remaining() <= 0:
      got = "" if size is None else f" ({size} bytes received)"
      raise DownloadError(
        url,
        f"not finished within the {self.seconds:g} s deadline{got}; "
        "a slow or stalled server? (--deadline-seconds sets it)",
      )


def _progress(done, total, seconds):
  rate = done / 2**20 / max(seconds, 1e-9)
  if total:
    return (
      f"{done / 2**20:.1f} of {total / 2**20:.1f} MiB ({100 * done / total:.0f}%), {rate:.1f} MiB/s"
    )
  return f"{done / 2**20:.1f} MiB, {rate:.1f} MiB/s"


def _mismatch(remote, size, digests):
  """None if size and digests match `remote`, else a one-line description."""
  if remote.size is not None and size != remote.size:
    got = ", ".join(f"{a} {d}" for a, d in digests.items())
    return f"size mismatch: expected {remote.size} bytes, got {size} bytes ({got})"
  for algorithm, expected in remote.digests().items():
    if digests[algorithm] != expected:
      return f"{algorithm} mismatch: expected {expected}, got {digests[algorithm]}"
  return None


# --- safe extraction ---------------------------------------------------------


def verify_archive(archive, known=()):
  """Checks an archive before anything is extracted from it.

  Args:
    archive: Path of the archive.
    known: `RemoteFile`s it may be (a spec's `sources`). If one has its name
      and its recorded size, the archive must match its digests too: a copy of
      the official file with a flipped bit is refused before extraction.

  Raises:
    DownloadError: A digest mismatch, or a gzip stream whose CRC or length
      does not match (gzip's own check, made over the whole file).
  """
  archive = pathlib.Path(archive)
  size = archive.stat().st_size
  for remote in known:
    if remote.filename == archive.name and remote.size == size:
      problem = _mismatch(remote, size, hashing.file_digests(archive, remote.digests()))
      if problem is not None:
        raise DownloadError(
          archive,
          f"{problem}: the official file's checksum does not match, "
          "the copy is damaged; delete it or fetch it again with "
          "--download",
        )
  with open(archive, "rb") as f:
    is_gzip = f.read(2) == b"\x1f\x8b"
  if is_gzip:
    try:
      with gzip.open(archive, "rb") as f:
        while f.read(_CHUNK_BYTES):
          pass
    except (OSError, EOFError, zlib.error) as e:
      raise DownloadError(archive, f"damaged gzip data ({e}); nothing extracted") from None


def extract_archive(archive, dest_dir, force=False, known=()):
  """Extracts a tar or zip archive into `dest_dir`, refusing unsafe members.

  Nothing is written unless every member is a regular file or folder with a
  relative path inside `dest_dir`. Top-level entries appear by rename, each
  complete or not at all.

  Args:
    archive: Path of a .tar, .tar.gz/.tgz or .zip file.
    dest_dir: Folder to extract into (created if missing).
    force: Replace top-level entries that already exist instead of failing.

    known: `RemoteFile`s the archive may be; see `verify_archive`.

  Returns:
    The extracted top-level paths, sorted.

  Raises:
    DownloadError: Unsafe, damaged or unreadable archive, or an entry is in the way.
  """
  dest_dir = pathlib.Path(dest_dir)
  dest_dir.mkdir(parents=True, exist_ok=True)
  with extracted(archive, dest_dir, known) as tmp:
    entries = sorted(tmp.iterdir())
    for entry in entries:
      if (dest_dir / entry.name).exists() and not force:
        raise DownloadError(
          dest_dir / entry.name, f"already exists; not extracting {archive} over it"
        )
    for entry in entries:
      replace(entry, dest_dir / entry.name)
  return [dest_dir / e.name for e in entries]


@contextlib.contextmanager
def extracted(archive, dest_dir, known=()):
  """Extracts `archive` into a hidden folder in `dest_dir`; yields it, then deletes it.

  The archive is checked first (`verify_archive`, with `known`). The folder
  sits in `dest_dir` so that moving entries out of it is a rename on one file
  system, not a copy.
  """
  verify_archive(archive, known)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_dir))
  try:
    _extract_checked(pathlib.Path(archive), tmp)
    yield tmp
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _member_parts(archive, name):
  """The path components of a member name, or DownloadError if it could escape."""
  # Zip names use "/" by spec but some Windows tools write "\"; tar names with
  # "\" are legal but only ever seen in attacks. Either way treat it as a separator.
  normal = name.replace("\\", "/")
  if "\0" in normal:
    raise DownloadError(archive, f"unsafe member {name!r}: NUL in name; nothing extracted")
  if normal.startswith("/") or re.match(r"[A-Za-z]:", normal):
    raise DownloadError(archive, f"unsafe member {name!r}: absolute path; nothing extracted")
  parts = [p for p in normal.split("/") if p not in ("", ".")]
  if ".." in parts:
    raise DownloadError(archive, f"unsafe member {name!r}: '..' in path; nothing extracted")
  return parts


def _plan_tar(archive, tar):
  """[(parts, is_dir, member)] of a tar, or DownloadError on the first unsafe member."""
  plan = []
  for member in tar.getmembers():
    parts = _member_parts(archive, member.name)
    if member.issym() or member.islnk():
      kind = "symlink" if member.issym() else "hard link"
      raise DownloadError(
        archive, f"unsafe member {member.name!r}: {kind} to {member.linkname!r}; nothing extracted"
      )
    if not (member.isfile() or member.isdir()):
      raise DownloadError(
        archive,
        f"unsafe member {member.name!r}: device, fifo or other special file; nothing extracted",
      )
    if parts:
      plan.append((parts, member.isdir(), member))
  return plan


def _plan_zip(archive, zf):
  """[(parts, is_dir, info)] of a zip, or DownloadError on the first unsafe member."""
  plan = []
  for info in zf.infolist():
    parts = _member_parts(archive, info.filename)
    kind = stat.S_IFMT(info.external_attr >> 16)
    # 0 means no Unix mode recorded (archives made on Windows): a plain entry.
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
      what = "symlink" if kind == stat.S_IFLNK else "device, fifo or other special file"
      raise DownloadError(archive, f"unsafe member {info.filename!r}: {what}; nothing extracted")
    if parts:
      plan.append((parts, info.is_dir() or kind == stat.S_IFDIR, info))
  return plan


def _extract_checked(archive, dest):
  """Checks every member of `archive`, then writes them all under `dest`."""
  try:
    if archive.name.lower().endswith(".zip") or (
      not _is_tar_name(archive.name) and zipfile.is_zipfile(archive)
    ):
      with zipfile.ZipFile(archive) as zf:
        _write_members(dest, _plan_zip(archive, zf), zf.open)
    else:
      with tarfile.open(archive) as tar:
        _write_members(dest, _plan_tar(archive, tar), tar.extractfile)
  except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, gzip.BadGzipFile) as e:
    raise DownloadError(archive, f"cannot read archive: {e}") from None


def _is_tar_name(name):
  return name.lower().endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


def _write_members(dest, plan, opener):
  # Only folders and regular files are created (never links), and no member
  # path holds "..", so every path below stays inside `dest`. Archive
  # permission bits are not applied: no setuid or world-writable files.
  for parts, is_dir, member in plan:
    target = dest.joinpath(*parts)
    if is_dir:
      target.mkdir(parents=True, exist_ok=True)
      continue
    target.parent.mkdir(parents=True, exist_ok=True)
    with opener(member) as src, open(target, "wb") as out:
      shutil.copyfileobj(src, out, _CHUNK_BYTES)


def replace(src, dst):
  """Renames `src` to `dst`, first moving any existing `dst` aside and deleting it."""
  if not (dst.exists() or dst.is_symlink()):
    os.replace(src, dst)
    return
  trash = pathlib.Path(tempfile.mkdtemp(prefix=".old-", dir=dst.parent))
  try:
    os.replace(dst, trash / dst.name)
    os.replace(src, dst)
  finally:
    shutil.rmtree(trash, ignore_errors=True)


# --- command line -----------------------------------------------------------


def _base_url(text):
  """argparse type of --mirror: an http(s)://host/... or file:/// URL."""
  parsed = urllib.parse.urlparse(text)
  if parsed.scheme not in ("http", "https", "file") or (
    parsed.scheme != "file" and not parsed.netloc
  ):
    raise argparse.ArgumentTypeError(f"{text!r} is not an http://, https:// or file:// URL")
  return text


def _positive_seconds(text):
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not (math.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
  return value


def _parse_args(argv):
  names = datasets.names()
  parser = cli.ArgumentParser(
    prog="python -m preprocess.download",
    description=(
      "Download the official archives of " + ", ".join(names) + ", verify their "
      "recorded checksums, and extract them into the raw-data layout the Beam job "
      "reads. Already installed data sets are skipped. Progress goes to stderr."
    ),
    epilog=(
      "Layout: <raw-dir>/<dataset>/, as each spec in preprocess/datasets/ describes. "
      "Offline? Use python -m preprocess.sample_data instead."
    ),
  )
  parser.add_argument(
    "--dataset", required=True, choices=names + ("all",), help="which data set to download"
  )
  parser.add_argument(
    "--raw-dir",
    required=True,
    type=pathlib.Path,
    help="raw data root; each data set goes into <raw-dir>/<dataset>/",
  )
  parser.add_argument(
    "--force", action="store_true", help="download again and replace installed files"
  )
  parser.add_argument(
    "--deadline-seconds",
    type=_positive_seconds,
    default=DEFAULT_DEADLINE_SECONDS,
    help="give up when the downloads have not finished after this long "
    "(default %(default)g; progress is printed every 5 s)",
  )
  parser.add_argument(
    "--mirror",
    metavar="BASE_URL",
    type=_base_url,
    help="fetch every file from BASE_URL/<file name> only, e.g. an "
    "internal copy of the archives; checksums are still verified",
  )
  args = parser.parse_args(argv)
  if args.raw_dir.exists() and not args.raw_dir.is_dir():
    parser.error(f"--raw-dir {args.raw_dir}: exists and is not a folder")
  return args


def main(argv=None):
  args = _parse_args(argv)
  names = datasets.names() if args.dataset == "all" else (args.dataset,)
  try:
    for name in names:
      sources = with_mirror(datasets.get(name).sources, args.mirror) if args.mirror else None
      paths = download(
        name,
        args.raw_dir,
        sources=sources,
        force=args.force,
        deadline_seconds=args.deadline_seconds,
      )
      print(f"{name}: {len(paths)} paths ready under {args.raw_dir / name}")
  except (DataFormatError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("error: interrupted; no partial files were kept", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
