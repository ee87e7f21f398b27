"""File access shared by the raw-data readers.

Readers open files through an `opener` (a callable path -> binary file object)
so the Beam job can hand them Beam's FileSystems for remote paths; `open_rb`
is the local default. `read_up_to` copes with file objects whose read() may
return fewer bytes than asked before the end (pipes, some remote files).
"""


def open_rb(path):
  """Opens a local file for binary reading (the readers' default opener)."""
  return open(path, "rb")


def read_up_to(f, n):
  """Reads n bytes, or fewer only at end of file (read() may return short)."""
  parts = []
  while n:
    part = f.read(n)
    if not part:
      break
    parts.append(part)
    n -= len(part)
  return b"".join(parts)


def seekable(f):
  """Whether `f` can seek; Beam's CompressedFile makes `seekable` a property, not io's method."""
  attr = getattr(f, "seekable", False)
  return attr() if callable(attr) else bool(attr)


def skip_to(f, offset):
  """Positions `f` at `offset` from its start, seeking if it can and reading past bytes if not.

  A short file is left at its end; the caller's next read reports it.
  """
  if offset == 0:
    return
  if seekable(f):
    f.seek(offset)
    return
  remaining = offset
  while remaining:
    got = len(f.read(min(remaining, 1 << 20)))
    if not got:
      return
    remaining -= got
