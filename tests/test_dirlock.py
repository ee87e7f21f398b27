"""preprocess/dirlock.py: one writer per directory, with real processes holding and dying."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from preprocess import dirlock

HOLDER = textwrap.dedent(
  """
  import sys, time
  from preprocess import dirlock
  lock = dirlock.acquire(sys.argv[1], "test holder")
  print("held", flush=True)
  time.sleep(60)
  """
)


def _start_holder(directory):
  proc = subprocess.Popen(
    [sys.executable, "-c", HOLDER, str(directory)],
    stdout=subprocess.PIPE,
    text=True,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_second_writer_is_refused_with_the_holder_named(tmp_path):
  proc = _start_holder(tmp_path / "out")
  try:
    with pytest.raises(dirlock.LockHeld) as e:
      dirlock.acquire(str(tmp_path / "out"), "second")
    message = str(e.value)
    assert "\n" not in message
    assert f"pid {proc.pid}" in message and "test holder" in message
  finally:
    proc.kill()
    proc.wait()


def test_lock_of_a_killed_process_is_taken_over_with_a_line(tmp_path):
  proc = _start_holder(tmp_path / "out")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  lines = []
  lock = dirlock.acquire(str(tmp_path / "out"), "next", log=lines.append)
  try:
    assert len(lines) == 1 and f"pid {proc.pid}" in lines[0] and "took over" in lines[0]
    holder = json.loads((tmp_path / "out" / ".lock").read_text())
    assert holder["pid"] == os.getpid() and holder["owner"] == "next"
  finally:
    lock.release()


def test_clean_release_leaves_nothing_to_take_over(tmp_path):
  with dirlock.hold(str(tmp_path / "a[1]"), "first") as lock:
    assert lock.active and os.path.isdir(tmp_path / "a[1]")
  lines = []
  with dirlock.hold(str(tmp_path / "a[1]"), "second", log=lines.append):
    pass
  assert lines == []


def test_object_store_paths_are_not_locked():
  lock = dirlock.acquire("gs://bucket/out", "x")
  assert not lock.active
  lock.release()
