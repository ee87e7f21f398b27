"""Digests of files: how the data flow recognises bytes it has seen before.

Used by the downloader (checksums of the official archives), by the Beam job
(the sha256 of every raw source file in metadata.json) and by the readers'
callers through an `opener`, so remote files hash the same way as local ones.
"""

import hashlib

from preprocess import fileio

CHUNK_BYTES = 1 << 20


def file_digests(path, algorithms=("sha256",), opener=fileio.open_rb):
  """{algorithm: lowercase hex digest} of a file's stored bytes, read once."""
  hashers = {a: hashlib.new(a) for a in algorithms}
  with opener(path) as f:
    for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
      for h in hashers.values():
        h.update(chunk)
  return {a: h.hexdigest() for a, h in hashers.items()}


def sha256_file(path, opener=fileio.open_rb):
  """Hex sha256 of a file's stored bytes."""
  return file_digests(path, ("sha256",), opener)["sha256"]
