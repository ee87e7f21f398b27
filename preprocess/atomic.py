"""Atomic file writes: a file under its final name is always complete.

Everything the data flow writes for others to trust (raw sample files,
metadata.json, rejects.jsonl, run configs) is written to a temporary name
beside the target and renamed into place, so an interrupted run never
leaves a truncated file that looks finished.
"""

import os
import pathlib
import uuid


def temp_name(path):
  """A unique temporary name beside `path` (same directory, so the rename stays on one file system)."""
  return f"{path}.tmp-{uuid.uuid4().hex}"


def write_bytes(path, data, filesystem=None):
  """Writes `data` to `path` via a temporary file and a rename.

  Args:
    path: Target path.
    data: bytes.
    filesystem: None for local files (parent folders are created), or an
      object with `create(path)` and `rename([src], [dst])`, such as Beam's
      `FileSystems`, for any other storage.
  """
  temp = temp_name(path)
  if filesystem is not None:
    with filesystem.create(temp) as f:
      f.write(data)
    filesystem.rename([temp], [path])
    return
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  try:
    with open(temp, "wb") as f:
      f.write(data)
    os.replace(temp, path)
  except BaseException:
    if os.path.exists(temp):
      os.unlink(temp)
    raise


def write_text(path, text, filesystem=None):
  """`write_bytes` of UTF-8 text."""
  write_bytes(path, text.encode("utf-8"), filesystem)
