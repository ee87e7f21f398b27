"""Nothing a user does by accident loses data: the Beam job and the data tools, run for real.

Each class of accident has its own test: folder names that look like patterns
(`[`, `]`, `*`, `?`), two jobs writing one output folder and a job killed
while holding it, files in real folders that are not data, and a job stopped
with SIGTERM as a scheduler stops it.
"""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from pipeline import outdir
from pipeline import plan
from preprocess import datasets
from preprocess import sample_data
from tests.conftest import ROOT
from tests.test_integrity import build
from tests.test_integrity import leftovers
from tests.test_integrity import one_error_line
from tests.test_integrity import run

# Matches "dxyz" as a pattern: `[x]` one x, `?` one character, `*` the rest.
PATTERN_NAME = "d[x]?*"
MATCHED_BY_IT = "dxyz"


def digests(folder):
  """{relative path: sha256} of every file below `folder`."""
  folder = pathlib.Path(folder)
  return {
    str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(folder.rglob("*"))
    if p.is_file()
  }


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """Sample raw data under a root whose name is a pattern matching a sibling."""
  base = tmp_path_factory.mktemp("raw")
  sample_data.generate(str(base / "plain"), seed=7)
  shutil.copytree(base / "plain", base / PATTERN_NAME)
  (base / MATCHED_BY_IT).mkdir()  # An empty sibling the pattern would match.
  return base


# --- A path is a path ---


def test_readers_take_a_raw_root_with_pattern_characters_literally(raw):
  for name in datasets.names():
    literal = plan.load(name, str(raw / PATTERN_NAME), image_size=16)
    plain = plan.load(name, str(raw / "plain"), image_size=16)
    assert {k: len(v) for k, v in literal.splits.items()} == {
      k: len(v) for k, v in plain.splits.items()
    }, name
    assert sorted(literal.files) == sorted(plain.files), name
    assert all(path.startswith(str(raw / PATTERN_NAME)) for path in literal.files.values())


def test_sample_data_writes_under_a_folder_with_pattern_characters(tmp_path):
  (tmp_path / "s1").mkdir()
  result = run("preprocess.sample_data", "--out-dir", tmp_path / "s[1]", "--dataset", "mnist")
  assert result.returncode == 0, result.stderr
  assert digests(tmp_path / "s[1]") and not list((tmp_path / "s1").iterdir())


def test_output_match_never_reaches_a_sibling_folder(tmp_path):
  for name, sibling in (("a[1]", "a1"), ("b*", "bcd"), ("q?", "qz")):
    for folder in (name, sibling):
      (tmp_path / folder).mkdir()
      (tmp_path / folder / f"{folder}.tfrecord").write_bytes(b"")
    found = outdir.match(str(tmp_path / name), "*.tfrecord")
    assert found == [str(tmp_path / name / f"{name}.tfrecord")], found


def test_overwrite_into_a_pattern_named_folder_leaves_its_sibling_alone(raw, tmp_path):
  out_sibling, out_pattern = tmp_path / MATCHED_BY_IT, tmp_path / PATTERN_NAME
  flags = ("--image-size", "16", "--num-shards", "2")
  build(raw / PATTERN_NAME, out_sibling, *flags, check=True)
  before = digests(out_sibling)
  build(raw / PATTERN_NAME, out_pattern, *flags, check=True)
  result = build(raw / PATTERN_NAME, out_pattern, *flags, "--overwrite")
  assert result.returncode == 0, result.stderr
  assert digests(out_sibling) == before  # Not one file of the sibling deleted or changed.
  assert digests(out_pattern) == before  # Same input, same bytes.
  verified = run(
    "pipeline.build_tfrecords", "--dataset", "catdog", "--out-dir", out_pattern, "--verify-data"
  )
  assert verified.returncode == 0 and "verified" in verified.stderr, verified.stderr


# --- One writer per output folder ---


def _start(raw, out, *flags):
  return subprocess.Popen(
    [sys.executable, "-m", "pipeline.build_tfrecords", "--dataset", "cifar10"]
    + ["--raw-dir", str(raw), "--out-dir", str(out), "--progress-seconds", "0"]
    + ["--num-shards", "16", *flags],
    cwd=ROOT,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
  )


def _wait_until_locked(proc, out):
  lock = pathlib.Path(out) / "cifar10" / ".lock"
  while not (lock.exists() and lock.read_text().strip()):
    assert proc.poll() is None, proc.stderr.read()
    time.sleep(0.05)


def test_a_second_job_on_one_output_gets_one_line_naming_the_first(raw, tmp_path):
  first = _start(raw / "plain", tmp_path)
  try:
    _wait_until_locked(first, tmp_path)
    os.killpg(first.pid, signal.SIGSTOP)  # Holds the lock, however fast the machine.
    try:
      second = build(raw / "plain", tmp_path, "--overwrite", dataset="cifar10")
    finally:
      os.killpg(first.pid, signal.SIGCONT)
    line = one_error_line(second)
    assert second.returncode == 2
    assert (
      f"is in use by python -m pipeline.build_tfrecords --dataset cifar10 (pid {first.pid}"
      in (line)
    ), line
    _, err = first.communicate(timeout=600)
  finally:
    if first.poll() is None:
      os.killpg(first.pid, signal.SIGKILL)
  assert first.returncode == 0, err
  out = tmp_path / "cifar10"
  assert (out / ".lock").read_text() == ""  # Released, and nothing but the job's own files.
  assert not leftovers(tmp_path)
  verified = run(
    "pipeline.build_tfrecords", "--dataset", "cifar10", "--out-dir", tmp_path, "--verify-data"
  )
  assert verified.returncode == 0, verified.stderr
  again = build(raw / "plain", tmp_path, dataset="cifar10")
  assert "output already exists" in one_error_line(again)  # The .lock is not counted as output.
  count = len([p for p in out.iterdir() if p.name != ".lock"])
  assert f"({count} files)" in one_error_line(again)


def test_the_lock_of_a_killed_job_is_taken_over_with_a_line(raw, tmp_path):
  """Killed with -9 after its first shard: a plain rerun replaces the remains, with one line."""
  killed = _start(raw / "plain", tmp_path)
  _wait_until_locked(killed, tmp_path)
  while not list((tmp_path / "cifar10").glob(".work-*/*")):  # a shard and its sidecar written
    assert killed.poll() is None, killed.stderr.read()
    time.sleep(0.05)
  os.killpg(killed.pid, signal.SIGKILL)  # As the out-of-memory killer ends a job.
  killed.wait(timeout=60)
  holder = json.loads((tmp_path / "cifar10" / ".lock").read_text())
  assert holder["pid"] == killed.pid
  result = build(raw / "plain", tmp_path, dataset="cifar10")  # --overwrite clears the same way
  assert result.returncode == 0, result.stderr
  assert (
    f"took over the lock of python -m pipeline.build_tfrecords --dataset cifar10 (pid {killed.pid}"
    in (result.stderr)
  )
  assert "replacing the incomplete output of an earlier run" in result.stderr, result.stderr
  assert (tmp_path / "cifar10" / "metadata.json").exists() and not leftovers(tmp_path)


# --- Files that are not data ---

NOT_DATA = {
  ".DS_Store": "hidden file, not data",
  "train/.DS_Store": "hidden file, not data",
  "train/cat/._cat.0.jpg": "hidden file, not data",
  "train/dog/.hidden": "hidden file, not data",
  "test/Thumbs.db": "operating-system metadata, not data",
  "train/cat/desktop.ini": "operating-system metadata, not data",
  "README.txt": "notes or documents, not data",
  "test/dog/notes.md": "notes or documents, not data",
}


def test_files_that_are_not_data_are_skipped_and_ledgered_not_rejected(raw, tmp_path):
  data = tmp_path / "raw"
  shutil.copytree(raw / "plain" / "catdog", data / "catdog")
  root = data / "catdog"
  image = next((root / "train" / "cat").iterdir()).read_bytes()
  for rel in NOT_DATA:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(image if rel.endswith(".jpg") else b"not data\n")
  outside = ["validation/cat/x.jpg", "stray.jpg"]  # Images beside the splits the layout knows.
  for rel in outside:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(image)
  clean = build(raw / "plain", tmp_path / "clean", "--image-size", "16", check=True)
  assert clean.returncode == 0
  result = build(data, tmp_path / "out", "--image-size", "16", check=True)
  assert "2 files outside the split folders are not converted" in result.stderr, result.stderr
  out = tmp_path / "out" / "catdog"
  skipped = [json.loads(l) for l in (out / "skipped.jsonl").read_text().splitlines()]
  reasons = {s["file"]: s["reason"] for s in skipped}
  for rel in outside:
    assert "outside the split folders" in reasons.pop(rel)
  assert reasons == NOT_DATA
  rejects = (out / "rejects.jsonl").read_text()
  assert rejects == (tmp_path / "clean" / "catdog" / "rejects.jsonl").read_text()
  records = json.loads((out / "metadata.json").read_text())["records"]
  assert records["read"] == records["written"] + records["rejected"]
  assert records["skipped"] == len(NOT_DATA) + len(outside)
  clean_records = json.loads((tmp_path / "clean" / "catdog" / "metadata.json").read_text())
  assert {k: v for k, v in records.items() if k != "skipped"} == {
    k: v for k, v in clean_records["records"].items() if k != "skipped"
  }


# --- SIGTERM ---


def test_sigterm_ends_a_job_as_ctrl_c_does(raw, tmp_path):
  proc = _start(raw / "plain", tmp_path)
  deadline_workers = []
  while not deadline_workers:
    assert proc.poll() is None, proc.stderr.read()
    deadline_workers = [
      c
      for c in psutil.Process(proc.pid).children(recursive=True)
      if "sdk_worker_main" in " ".join(c.cmdline())
    ]
  proc.send_signal(signal.SIGTERM)  # The driver alone, as a scheduler signals it.
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err
  assert "Traceback" not in err and len(err.splitlines()) <= 2, err
  assert "error: terminated (SIGTERM); temporary files removed" in err, err
  assert not leftovers(tmp_path) and not (tmp_path / "cifar10" / "metadata.json").exists()
  assert not [w for w in deadline_workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
