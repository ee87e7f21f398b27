"""One writer per directory: a lock file that names its holder.

Every tool that writes a directory others will trust holds this lock while it
writes: the Beam job its output folder, a trainer its model dir. A second
writer gets one line naming the holder (host, pid, what it runs, since when)
instead of both reporting success over mixed files.

The lock is an advisory `flock` on `<dir>/.lock`, so the kernel releases it
when its process dies, however it dies: a lock never outlives a crash. The
file itself stays (empty after a clean release; naming the dead holder after a
crash), so the next writer can say whose lock it took over. It is never
deleted: deleting a file that another process has open and is about to lock
would let two writers hold two different files.

Local and mounted file systems only (a shared volume on a cluster included,
where the NFS client forwards `flock` to the server's lock manager). Object
stores (`gs://`, `s3://`) have no such lock; `hold` there does nothing, which
the caller can tell from `Lock.active`.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys

LOCK_NAME = ".lock"


class LockHeld(Exception):
  """Another live process holds the directory; the message is one line naming it."""


def _describe(holder):
  if not holder:
    return "another process"
  return (
    f"{holder.get('owner', 'a process')} (pid {holder.get('pid', '?')} on "
    f"{holder.get('host', '?')}, since {holder.get('started', '?')})"
  )


def _read_holder(fd):
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 65536).decode("utf-8", "replace").strip()
  if not text:
    return None
  try:
    holder = json.loads(text)
  except ValueError:
    return {"owner": f"an unreadable lock ({text[:40]!r})"}
  return holder if isinstance(holder, dict) else None


class Lock:
  """A held lock; `release()` (or leaving `hold`'s block) lets the next writer in."""

  def __init__(self, path, fd):
    self.path = path
    self._fd = fd

  @property
  def active(self):
    return self._fd is not None

  def release(self):
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # a clean release leaves no holder to report
    finally:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def acquire(directory, owner, log=None):
  """Takes the lock of `directory` (created if missing) for `owner`.

  Args:
    directory: The folder to write; used literally.
    owner: What holds it, shown to a second writer (e.g. "trainers/cifar10.py train").
    log: Called with one line when a dead holder's lock is taken over
      (default: print to stderr).

  Returns:
    A `Lock` (inactive on object stores, where there is nothing to lock).

  Raises:
    LockHeld: another live process holds it.
    OSError: the folder cannot be created or the lock file not opened.
  """
  if "://" in directory:
    return Lock(None, None)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _read_holder(fd)
    os.close(fd)
    raise LockHeld(
      f"{directory} is in use by {_describe(holder)}: wait for it to finish, stop it, "
      "or use another directory"
    ) from None
  except BaseException:
    os.close(fd)
    raise
  previous = _read_holder(fd)
  if previous:  # we hold the flock, so its last holder died without releasing it
    (log or (lambda line: print(line, file=sys.stderr, flush=True)))(
      f"{directory}: took over the lock of {_describe(previous)}, which is no longer running"
    )
  holder = {
    "owner": owner,
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  }
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, (json.dumps(holder) + "\n").encode())
  os.fsync(fd)
  return Lock(path, fd)


@contextlib.contextmanager
def hold(directory, owner, log=None):
  """`acquire` for the duration of a `with` block."""
  lock = acquire(directory, owner, log)
  try:
    yield lock
  finally:
    lock.release()
