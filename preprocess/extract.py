"""Safe extraction of downloaded archives: checked member by member, placed by rename.

Archives are checked before anything is extracted (no absolute paths, no
`..`, no links or devices, the official digest when the archive is the
official file, the gzip CRC always) and are extracted into a hidden temporary
folder whose entries are renamed into place, so an interrupted run never
leaves a half-extracted data set that looks complete. preprocess/download.py
fetches the archives; the data-set layouts (preprocess/datasets/) call
`extracted`/`extract_archive` to install them, and the Beam job's listing
re-extracts a kept CIFAR-10 archive.
"""

import contextlib
import gzip
import os
import pathlib
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib

from preprocess import hashing
from preprocess.errors import DownloadError

_CHUNK_BYTES = 1 << 20


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
      problem = remote.mismatch(size, hashing.file_digests(archive, remote.digests()))
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
