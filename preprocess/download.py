"""Fetches the official archives of each registered data set into the raw-data layout.

Step zero of the data flow, for machines with internet: official archives ->
checksum-verified, safely extracted files under RAW in the layout the readers
expect (each data set's spec in preprocess/datasets/ names its sources and
layout, e.g. `RAW/cifar10/cifar-10-batches-bin/`, `RAW/mnist/*-ubyte.gz`,
`RAW/catdog/{train,test}/{cat,dog}/`) -> pipeline/plan.py lists them -> the
Beam job writes shards. Without internet, preprocess/sample_data.py writes the
same layout from generated images.

pooch fetches each file: it streams it into a temporary file, checks the
known hash and deletes a mismatch. This module adds what pooch lacks: the
other URLs of a file tried in turn when one fails, the recorded size and a
second digest, an overall deadline (a trickling server never times out a
read), progress lines, and one-line errors. A file under its final name is
always a verified one. The layouts install the files with the safe extraction
of preprocess/extract.py. Archives are kept after extraction: pipeline/plan.py
re-extracts the CIFAR-10 one if its batches folder is deleted, and `--force`
reuses nothing.

Usage:
  python -m preprocess.download --dataset {NAME,all} --raw-dir DIR [--force]
"""

import argparse
import contextlib
import dataclasses
import math
import os
import pathlib
import re
import sys
import time
import urllib.parse

import pooch
import requests

from preprocess import cli
from preprocess import datasets
from preprocess import hashing
from preprocess.errors import DataFormatError
from preprocess.errors import DownloadError

_CHUNK_BYTES = 1 << 20
# pooch logs every download at INFO to stderr; the lines here say it once.
pooch.get_logger().setLevel("WARNING")
_PROGRESS_SECONDS = 5.0
_TIMEOUT_SECONDS = 60
# One hour: the largest archive (cat/dog, about 800 MB) needs 0.25 MB/s to make it.
DEFAULT_DEADLINE_SECONDS = 3600.0
_USER_AGENT = "cnn-pipeline-preprocess-download/1.0 (pooch)"
_DIGEST_LENGTHS = {"sha256": 64, "md5": 32}


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

  def mismatch(self, size, digests):
    """None if `size` and `digests` ({algorithm: hex}) match this file, else a one-line description."""
    if self.size is not None and size != self.size:
      got = ", ".join(f"{a} {d}" for a, d in digests.items())
      return f"size mismatch: expected {self.size} bytes, got {size} bytes ({got})"
    for algorithm, expected in self.digests().items():
      if digests[algorithm] != expected:
        return f"{algorithm} mismatch: expected {expected}, got {digests[algorithm]}"
    return None


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
    problem = remote.mismatch(path.stat().st_size, hashing.file_digests(path, remote.digests()))
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
  """Downloads `url` with pooch to a hidden name beside `path`, verifies it, renames it.

  pooch streams the body into a temporary file, checks it against the known
  hash (the sha256, else the md5) and deletes it on a mismatch; this adds
  what pooch lacks: the recorded size, a second digest when both are given,
  the overall deadline and one-line errors.
  """
  algorithm, digest = next(iter(remote.digests().items()))
  part = path.parent / f".{remote.filename}.part-{os.getpid()}"
  progress = _ProgressLog(path.name, remote.size, log, deadline, url)
  downloader = pooch.HTTPDownloader(
    progressbar=progress,
    # pooch's default 1 KiB chunks made a 64 MiB download 7x slower (docs/data.md).
    chunk_size=_CHUNK_BYTES,
    timeout=deadline.timeout(),
    headers={"User-Agent": _USER_AGENT},
  )
  log(f"{path}: downloading {url}")
  try:
    pooch.retrieve(
      url, f"{algorithm}:{digest}", fname=part.name, path=part.parent, downloader=downloader
    )
    size = part.stat().st_size
    # pooch has checked `algorithm`; hash again only for a second digest.
    others = {a: d for a, d in remote.digests().items() if a != algorithm}
    digests = dict(hashing.file_digests(part, others) if others else {}, **{algorithm: digest})
    problem = remote.mismatch(size, digests)
    if problem is not None:
      raise DownloadError(path, f"{problem} (fetched from {url}; download deleted)")
    os.chmod(part, 0o644)  # pooch's temporary file is owner-only.
    os.replace(part, path)
  except requests.HTTPError as e:
    raise DownloadError(url, f"HTTP {e.response.status_code} {e.response.reason}") from None
  except requests.RequestException as e:
    deadline.check(url, progress.done)  # A read cut short by the deadline says so.
    raise DownloadError(url, f"cannot connect: {_request_reason(e)}") from None
  except ValueError as e:  # pooch: the known hash does not match; it deleted the download.
    got = _HASH_GOT.search(str(e))
    found = f", got {got.group(1)}" if got else ""
    raise DownloadError(
      path, f"{algorithm} mismatch: expected {digest}{found} (fetched from {url}; download deleted)"
    ) from None
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(part)
  log(f"{path.name}: {size / 2**20:.1f} MiB in {progress.seconds():.1f} s")


# pooch's mismatch message: "... does not match the known hash: expected X but got Y. ..."
_HASH_GOT = re.compile(r"but got ([0-9a-f]+)")


def _request_reason(error):
  """The innermost reason of a requests error, on one line (urllib3 nests them deeply)."""
  inner = error
  while inner.__context__ is not None or getattr(inner, "reason", None) is not None:
    nxt = getattr(inner, "reason", None)
    inner = nxt if isinstance(nxt, BaseException) else inner.__context__
    if inner is None:
      break
  return " ".join(str(inner or error).split())


class _ProgressLog:
  """pooch's progress bar interface (total, update, reset, close), as a line every few seconds.

  Also enforces the overall deadline: a server that trickles bytes never
  times out a read, but every chunk passes through `update`.
  """

  def __init__(self, name, size, log, deadline, url):
    self.total = size
    self.done = 0
    self._name, self._log, self._deadline, self._url = name, log, deadline, url
    self._start = self._last = time.monotonic()

  def update(self, n):
    self._deadline.check(self._url, self.done)
    self.done += n or 0  # pooch's last call passes the total, None when unknown.
    now = time.monotonic()
    if now - self._last >= _PROGRESS_SECONDS:
      self._last = now
      total = self.total or None
      self._log(
        f"{self._name}: {_progress(min(self.done, total or self.done), total, now - self._start)}"
      )

  def reset(self):
    self.done = 0

  def close(self):
    pass

  def seconds(self):
    return time.monotonic() - self._start


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
