"""Issue 10, data side: hostile but realistic inputs to the raw-data readers and the Beam job.

Every bad input is made here. Each case must end in one line naming the file
and the problem, or in a ledger entry with read == written + rejected, and no
run may leave a metadata.json (what the trainers trust) when its output is
incomplete. Shards are read back with the pure-Python checks in
preprocess/schema.py and, where it matters, with tf.data.
"""

import json
import os
import pathlib
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time

import psutil
import pytest

from pipeline import plan
from preprocess import download
from preprocess import errors
from preprocess import extract
from preprocess import sample_data
from preprocess import schema
from preprocess.errors import DataFormatError
from tests.conftest import ROOT


def run(module, *args, timeout=300, preexec_fn=None, check=False):
  """Runs `python -m module args` from the repository root; returns the CompletedProcess."""
  result = subprocess.run(
    [sys.executable, "-m", module, *map(str, args)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    preexec_fn=preexec_fn,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
  )
  if check and result.returncode != 0:
    pytest.fail(f"{module} failed ({result.returncode}):\n{result.stderr[-3000:]}")
  return result


def build(raw, out, *flags, dataset="catdog", **kwargs):
  return run(
    "pipeline.build_tfrecords",
    "--dataset",
    dataset,
    "--raw-dir",
    raw,
    "--out-dir",
    out,
    "--progress-seconds",
    "0",
    *flags,
    **kwargs,
  )


def one_error_line(result):
  """The single `error:` line of a failed run; fails if there are more lines of noise."""
  assert result.returncode != 0, result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, result.stderr
  return errors[0]


def leftovers(out_dir):
  """Temporary files a run must not leave behind."""
  return [
    p.name
    for p in pathlib.Path(out_dir).rglob("*")
    if ".tmp-" in p.name or p.name.startswith(".work-") or p.name.startswith(".extract-")
  ]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  root = tmp_path_factory.mktemp("raw")
  sample_data.generate(str(root), names=("catdog", "cifar10"), seed=5)
  return root


@pytest.fixture(scope="module")
def catdog_out(raw, tmp_path_factory):
  out = tmp_path_factory.mktemp("out")
  build(raw, out, "--image-size", "16", "--image-format", "png", check=True)
  return out / "catdog"


# --- 1 and 8: symlinks, special files and non-UTF-8 names in image folders ---


@pytest.fixture(scope="module")
def hostile_catdog(raw, tmp_path_factory):
  """A catdog tree whose cat folder is a symlink, with every kind of unreadable entry."""
  base = tmp_path_factory.mktemp("hostile")
  elsewhere = base / "elsewhere"
  shutil.copytree(raw / "catdog" / "train" / "cat", elsewhere / "cat")
  root = base / "raw" / "catdog"
  shutil.copytree(raw / "catdog" / "test", root / "test")
  (root / "train").mkdir(parents=True)
  shutil.copytree(raw / "catdog" / "train" / "dog", root / "train" / "dog")
  (root / "train" / "cat").symlink_to(elsewhere / "cat")  # Followed.
  dog = root / "train" / "dog"
  (dog / "loop").symlink_to(dog)  # A folder that contains itself.
  (dog / "again").symlink_to(elsewhere / "cat")  # Already listed as train/cat.
  (dog / "dangling.jpg").symlink_to(base / "nowhere.jpg")
  (dog / "self.jpg").symlink_to(dog / "self.jpg")  # ELOOP.
  os.mkfifo(dog / "fifo.jpg")  # Opening it would block forever.
  (dog / "null.jpg").symlink_to("/dev/null")  # A character device.
  name = os.fsencode(dog) + b"/dog.\xff\xfe.jpg"  # Not UTF-8.
  with open(name, "wb") as f:
    f.write(b"x")
  cats = len(os.listdir(elsewhere / "cat"))
  return base / "raw", cats


HOSTILE_REASONS = {
  "train/dog/loop": "loops back",
  "train/dog/again": "already listed as 'train/cat'",
  "train/dog/dangling.jpg": "dangling symlink",
  "train/dog/self.jpg": "symlink loop",
  "train/dog/fifo.jpg": "a fifo",
  "train/dog/null.jpg": "a character device",
  "train/dog/dog.\\xff\\xfe.jpg": "not valid UTF-8",
}


def test_listing_follows_folder_symlinks_and_ledgers_every_unreadable_entry(hostile_catdog):
  raw_dir, cats = hostile_catdog
  started = time.monotonic()
  listed = plan.load("catdog", str(raw_dir), image_size=16, image_format="png")
  assert time.monotonic() - started < 10  # The fifo was never opened.
  reasons = {r.file: r.reason for r in listed.rejects}
  for file, reason in HOSTILE_REASONS.items():
    assert reason in reasons.get(file, ""), (file, reasons)
  assert len(reasons) == len(HOSTILE_REASONS)
  labels = [s.label for s in listed.splits["train"]]
  assert labels.count(0) == cats  # Every cat, through the symlinked folder.


def test_hostile_folder_converts_with_an_exact_ledger_and_quiet_output(hostile_catdog, tmp_path):
  raw_dir, cats = hostile_catdog
  result = build(
    raw_dir,
    tmp_path,
    "--image-size",
    "16",
    "--image-format",
    "png",
    "--max-reject-fraction",
    "1",
    check=True,
    timeout=120,
  )
  for noise in ("apitools", "Logging handler", "Load pipeline options", "oneDNN", "absl"):
    assert noise not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 2, result.stderr
  meta = json.loads((tmp_path / "catdog" / "metadata.json").read_text())
  counts = meta["records"]
  assert counts["read"] == counts["written"] + counts["rejected"]
  assert counts["rejected"] == len(HOSTILE_REASONS)
  assert meta["splits"]["train"]["label_counts"][0] == cats
  ledger = [json.loads(l) for l in (tmp_path / "catdog" / "rejects.jsonl").read_text().splitlines()]
  assert {r["file"] for r in ledger} == set(HOSTILE_REASONS)
  assert (
    run(
      "pipeline.build_tfrecords", "--verify-data", "--dataset", "catdog", "--out-dir", tmp_path
    ).returncode
    == 0
  )


# --- 2: the CIFAR-10 archive is verified before anything is extracted ---


def _cifar_archive(raw, root):
  root.mkdir(parents=True)
  archive = root / "cifar-10-binary.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(raw / "cifar10" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
  return archive


def test_damaged_cifar_archive_is_refused_and_nothing_is_left_extracted(raw, tmp_path):
  archive = _cifar_archive(raw, tmp_path / "raw" / "cifar10")
  data = bytearray(archive.read_bytes())
  data[len(data) // 2] ^= 0x10  # One flipped bit in the compressed stream.
  archive.write_bytes(bytes(data))
  with pytest.raises(DataFormatError) as info:
    plan.load("cifar10", str(tmp_path / "raw"))
  assert str(info.value).startswith(f"{archive}: ") and "\n" not in str(info.value)
  assert sorted(p.name for p in archive.parent.iterdir()) == ["cifar-10-binary.tar.gz"]
  # The same through the Beam job: one line, and the next run fails the same way,
  # not on a half-extracted folder.
  for _ in range(2):
    line = one_error_line(build(tmp_path / "raw", tmp_path / "out", dataset="cifar10"))
    assert str(archive) in line


def test_intact_archive_is_extracted_then_converted(raw, tmp_path):
  _cifar_archive(raw, tmp_path / "raw" / "cifar10")
  listed = plan.load("cifar10", str(tmp_path / "raw"))
  assert sum(s.count for s in listed.splits["train"]) == 2500
  assert not leftovers(tmp_path / "raw")


def test_official_file_with_the_right_size_but_another_digest_is_refused(raw, tmp_path):
  archive = _cifar_archive(raw, tmp_path / "a")
  official = download.RemoteFile(
    archive.name, ("https://example.invalid/x",), sha256="0" * 64, size=archive.stat().st_size
  )
  with pytest.raises(download.DownloadError, match="sha256 mismatch.*damaged"):
    extract.verify_archive(archive, [official])
  extract.verify_archive(archive, [])  # Not the official file: the gzip CRC alone passes.


# --- 3: empty splits and splits that lose too much fail without metadata.json ---


def test_split_that_loses_everything_fails_without_metadata(raw, tmp_path):
  tree = tmp_path / "raw" / "catdog"
  shutil.copytree(raw / "catdog", tree)
  for image in (tree / "test").rglob("*.*"):
    image.write_bytes(b"not an image")
  line = one_error_line(build(tmp_path / "raw", tmp_path / "out", "--image-size", "16"))
  assert "split 'test' has no records" in line and "rejects.jsonl" in line
  assert not (tmp_path / "out" / "catdog" / "metadata.json").exists()
  assert (tmp_path / "out" / "catdog" / "rejects.jsonl").read_text().count("\n") == 60
  assert not leftovers(tmp_path / "out")


def test_split_over_the_reject_fraction_fails_and_under_it_passes(raw, tmp_path):
  tree = tmp_path / "raw" / "catdog"
  shutil.copytree(raw / "catdog", tree)
  for image in sorted((tree / "test" / "cat").iterdir())[:9]:  # 9 of 60 test images: 15%.
    image.write_bytes(b"")
  line = one_error_line(build(tmp_path / "raw", tmp_path / "a", "--image-size", "16"))
  assert "split 'test' lost 9 of 60 records" in line and "--max-reject-fraction 0.1" in line
  assert not (tmp_path / "a" / "catdog" / "metadata.json").exists()
  build(
    tmp_path / "raw",
    tmp_path / "b",
    "--image-size",
    "16",
    "--max-reject-fraction",
    "0.2",
    check=True,
  )
  assert (
    json.loads((tmp_path / "b" / "catdog" / "metadata.json").read_text())["records"]["rejected"]
    == 9
  )


def test_a_class_without_records_in_a_split_is_warned_and_recorded(raw, tmp_path):
  tree = tmp_path / "raw" / "catdog"
  shutil.copytree(raw / "catdog", tree)
  for image in (tree / "test" / "dog").iterdir():
    image.unlink()
  result = build(tmp_path / "raw", tmp_path / "out", "--image-size", "16", check=True)
  warnings = [l for l in result.stderr.splitlines() if l.startswith("warning:")]
  assert len(warnings) == 1, result.stderr
  assert "test has no dog (label counts [30, 0])" in warnings[0], warnings[0]
  meta = schema.read_metadata(tmp_path / "out" / "catdog")
  assert meta.splits["test"].empty_classes == ["dog"] and meta.splits["train"].empty_classes == []
  assert meta.splits["test"].label_counts == [30, 0]


def test_split_emptied_while_listing_fails_with_one_line(raw, tmp_path):
  tree = tmp_path / "raw" / "catdog"
  shutil.copytree(raw / "catdog", tree)
  for image in (tree / "test").rglob("*.*"):
    image.rename(image.with_suffix(".bin"))
  line = one_error_line(build(tmp_path / "raw", tmp_path / "out"))
  assert "split 'test' has no usable records" in line and "not an image file" in line


# --- 4: worker failures, Ctrl-C and killed workers: one line, no temporary shards ---


def _small_file_limit():
  # Files above 64 KiB cannot be written (EFBIG), as on a full disk; Python
  # ignores SIGXFSZ, so the write fails instead of killing the process.
  resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))


def test_unwritable_output_is_one_line_naming_the_shard(raw, tmp_path):
  result = build(raw, tmp_path, "--image-size", "64", preexec_fn=_small_file_limit)
  line = one_error_line(result)
  assert "cannot write shard" in line and ".tfrecord" in line and "File too large" in line
  log = line.rsplit("full trace: ", 1)[1].rstrip(")")
  assert "Traceback" in pathlib.Path(log).read_text()
  os.remove(log)
  assert not leftovers(tmp_path)
  assert not (tmp_path / "catdog" / "metadata.json").exists()
  assert len(result.stderr.splitlines()) <= 3, result.stderr


def _start(raw, out, env=None):
  return subprocess.Popen(
    [
      sys.executable,
      "-m",
      "pipeline.build_tfrecords",
      "--dataset",
      "cifar10",
      "--raw-dir",
      str(raw),
      "--out-dir",
      str(out),
      "--progress-seconds",
      "0",
      "--num-shards",
      "16",
    ],
    cwd=ROOT,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
    env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
  )


def _workers(proc):
  return [
    c
    for c in psutil.Process(proc.pid).children(recursive=True)
    if "sdk_worker_main" in " ".join(c.cmdline()) and "python" in c.cmdline()[0]
  ]


def _wait_for_workers(proc):
  deadline = time.monotonic() + 60
  while not _workers(proc):
    assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
    time.sleep(0.1)
  time.sleep(0.5)


def test_ctrl_c_is_one_line_and_leaves_no_temporary_files(raw, tmp_path):
  """Ctrl-C after some shards are finished: no shard, no Beam temporary folder is left."""
  temp = tmp_path / "tmp"
  temp.mkdir()
  proc = _start(raw, tmp_path / "out", env={"TMPDIR": str(temp)})
  _wait_for_workers(proc)
  out = tmp_path / "out" / "cifar10"
  while not list(out.glob("*.tfrecord")):
    assert proc.poll() is None, proc.stderr.read()
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGINT)  # What a terminal's Ctrl-C does.
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, err
  assert "Traceback" not in err and "interrupted" in err and len(err.splitlines()) <= 2, err
  assert "no shards and no metadata.json left" in err, err
  assert [p.name for p in out.iterdir()] == [".lock"]  # A plain rerun has nothing in its way.
  log = err.rsplit("(log: ", 1)[1].rstrip(")\n")
  assert [p.name for p in temp.iterdir()] == [os.path.basename(log)], list(temp.iterdir())


def test_killed_worker_ends_the_run_with_one_line(raw, tmp_path):
  proc = _start(raw, tmp_path)
  _wait_for_workers(proc)
  workers = _workers(proc)
  workers[0].kill()  # As the out-of-memory killer would.
  try:
    _, err = proc.communicate(timeout=60)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the run hung after its worker died")
  assert proc.returncode == 1, err
  assert "a Beam worker process died" in err and "killed by signal 9" in err, err
  assert "Traceback" not in err and len(err.splitlines()) <= 2, err
  assert not leftovers(tmp_path) and not (tmp_path / "cifar10" / "metadata.json").exists()
  assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def test_root_cause_finds_the_projects_line_in_a_beam_traceback():
  wrapped = RuntimeError(
    "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
    "pipeline.convert.ShardFailure: /data/a.bin: cannot read: Permission denied "
    "[while running 'ConvertShards/ParDo(ConvertShardFn)']\n"
  )
  assert errors.root_cause(wrapped) == "/data/a.bin: cannot read: Permission denied"
  other = RuntimeError("Traceback (most recent call last):\n  File \"y\"\nValueError: boom\n")
  assert errors.root_cause(other) == "ValueError: boom"
  assert errors.root_cause(PermissionError(13, "Permission denied", "/o")) == (
    "/o: Permission denied"
  )


# --- 5 and 6: damaged or foreign shards and metadata that disagrees with them ---


def _copy(catdog_out, tmp_path):
  shutil.copytree(catdog_out, tmp_path / "catdog")
  return tmp_path / "catdog"


def _verify(data_dir):
  result = run(
    "pipeline.build_tfrecords",
    "--verify-data",
    "--dataset",
    "catdog",
    "--out-dir",
    data_dir.parent,
    timeout=60,
  )
  return one_error_line(result) if result.returncode else None


def test_verify_data_passes_on_a_fresh_output(catdog_out):
  assert _verify(catdog_out) is None
  meta = schema.read_metadata(catdog_out)
  for split in meta.splits.values():
    for shard in split.shards:
      assert len(shard.sha256) == 64 and shard.num_bytes == (catdog_out / shard.file).stat().st_size
      assert schema.find_corruption(catdog_out / shard.file) is None


def test_one_flipped_byte_is_found_with_its_record_and_offset(catdog_out, tmp_path):
  data_dir = _copy(catdog_out, tmp_path)
  shard = data_dir / "train-00001-of-00004.tfrecord"
  data = bytearray(shard.read_bytes())
  data[len(data) // 2] ^= 0x01
  shard.write_bytes(bytes(data))
  found = schema.find_corruption(shard)
  assert found is not None and found.problem == "data CRC mismatch" and found.record > 0
  assert found.offset < len(data) // 2 < found.offset + 12 + 4096 * 4
  line = _verify(data_dir)
  assert line == f"error: {found.describe(shard)}"
  assert "corrupted record" in line and f"at byte {found.offset}" in line


def test_foreign_shard_with_the_same_record_count_is_caught_by_its_sha256(catdog_out, tmp_path):
  data_dir = _copy(catdog_out, tmp_path)
  meta = json.loads((data_dir / "metadata.json").read_text())
  a, b = meta["splits"]["train"]["shards"][:2]
  assert a["num_examples"] == b["num_examples"]
  shutil.copy(data_dir / b["file"], data_dir / a["file"])
  line = _verify(data_dir)
  assert a["file"] in line and "sha256" in line and "foreign or modified" in line


def _edit(data_dir, edit):
  path = data_dir / "metadata.json"
  meta = json.loads(path.read_text())
  edit(meta)
  path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
  "edit, message",
  [
    (
      lambda m: m.update(image_shape=[32, 32, 3]),
      "record 0 is 16x16x3 but metadata.json says image_shape [32, 32, 3]",
    ),
    (lambda m: m.update(num_classes=3), "num_classes is 3 but class_names has 2 names"),
    (
      lambda m: m.update(num_classes=3, class_names=["cat", "dog", "cow"]),
      "label_counts has 2 entries but num_classes is 3",
    ),
    (lambda m: m["splits"]["train"].pop("shards"), "missing key splits.train.shards"),
    (lambda m: m.update(splits=[1, 2]), "splits must be an object, got list"),
    (
      lambda m: m["splits"]["test"]["shards"][0].pop("sha256"),
      "missing key splits.test.shards[0].sha256",
    ),
    (
      lambda m: m["splits"]["test"]["shards"][0].update(file="../x.tfrecord"),
      "must be a plain file name",
    ),
    (lambda m: m.update(image_format="gif"), "image_format must be one of png, jpeg"),
  ],
)
def test_edited_metadata_gives_one_line(catdog_out, tmp_path, edit, message):
  data_dir = _copy(catdog_out, tmp_path)
  _edit(data_dir, edit)
  line = _verify(data_dir)
  assert line is not None and message in line and str(data_dir) in line


def test_metadata_json_that_is_a_directory_or_missing(catdog_out, tmp_path):
  data_dir = _copy(catdog_out, tmp_path)
  (data_dir / "metadata.json").unlink()
  assert "metadata.json: not found: run make preprocess" in _verify(data_dir)
  (data_dir / "metadata.json").mkdir()
  assert "metadata.json: is a directory" in _verify(data_dir)
  with pytest.raises(schema.MetadataError, match="is a directory"):
    schema.read_metadata(data_dir)


def test_check_record_reads_examples_without_tensorflow(catdog_out):
  meta = schema.read_metadata(catdog_out)
  first = schema.first_example(catdog_out / meta.splits["test"].shards[0].file)
  features = schema.decode_example(first)
  assert (features[schema.HEIGHT], features[schema.WIDTH], features[schema.CHANNELS]) == (16, 16, 3)
  assert features[schema.FORMAT] == b"png" and 0 <= features[schema.LABEL] < 2
  schema.check_record("x", first, meta)


# --- 7: every flag of every data-side command is checked at parse time ---


@pytest.mark.parametrize(
  "module, args, message",
  [
    (
      "pipeline.build_tfrecords",
      ["--dataset", "catdog", "--raw-dir", "r", "--out-dir", "o", "--progress-seconds", "nan"],
      "--progress-seconds",
    ),
    (
      "pipeline.build_tfrecords",
      ["--dataset", "catdog", "--raw-dir", "r", "--out-dir", "o", "--max-reject-fraction", "1.5"],
      "--max-reject-fraction",
    ),
    (
      "pipeline.build_tfrecords",
      ["--dataset", "catdog", "--raw-dir", "r", "--out-dir", "o", "--max-reject-fraction", "nan"],
      "--max-reject-fraction",
    ),
    (
      "pipeline.build_tfrecords",
      ["--dataset", "catdog", "--raw-dir", "r", "--out-dir", "FILE"],
      "exists and is not a folder",
    ),
    ("pipeline.build_tfrecords", ["--dataset", "catdog", "--out-dir", "o"], "--raw-dir"),
    (
      "preprocess.download",
      ["--dataset", "mnist", "--raw-dir", "r", "--mirror", "not a url"],
      "not an http://",
    ),
    (
      "preprocess.download",
      ["--dataset", "mnist", "--raw-dir", "r", "--deadline-seconds", "-1"],
      "positive number of seconds",
    ),
    ("preprocess.download", ["--dataset", "mnist", "--raw-dir", "FILE"], "not a folder"),
    ("preprocess.sample_data", ["--out-dir", "FILE"], "is a file, not a folder"),
    ("preprocess.sample_data", ["--out-dir", "FILE/sub"], "is a file, not a folder"),
    ("preprocess.sample_data", ["--out-dir", "o", "--seed", "-1"], "non-negative"),
    ("preprocess.sample_data", ["--out-dir", "o", "--seed", str(2**64)], "below 2**63"),
  ],
)
def test_bad_flags_are_one_line_before_any_work(tmp_path, module, args, message):
  (tmp_path / "FILE").write_text("x")
  args = [a.replace("FILE", str(tmp_path / "FILE")) for a in args]
  started = time.monotonic()
  result = run(module, *args, timeout=60)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0] and lines[0].endswith("(see --help)"), lines
  assert not (tmp_path / "o").exists()
  if module == "pipeline.build_tfrecords":
    assert time.monotonic() - started < 3  # Beam (about 3 s to import) was not loaded.


# --- 8: the download has an overall deadline ---


@pytest.fixture
def trickling_server():
  """An HTTP server on 127.0.0.1 that sends one byte every 5 s, forever."""
  listener = socket.create_server(("127.0.0.1", 0))
  stop = threading.Event()

  def serve():
    listener.settimeout(0.2)
    while not stop.is_set():
      try:
        conn, _ = listener.accept()
      except OSError:
        continue
      with conn:
        conn.recv(65536)
        # No Content-Length: the body runs until the server closes, which it never does.
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        while not stop.wait(5):
          try:
            conn.sendall(b"x")
          except OSError:
            break

  thread = threading.Thread(target=serve, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
  stop.set()
  thread.join()
  listener.close()


def test_trickling_server_fails_after_the_deadline(trickling_server, tmp_path, monkeypatch):
  monkeypatch.setenv("no_proxy", "*")
  lines = []
  started = time.monotonic()
  sources = download.with_mirror(download.datasets.get("mnist").sources, trickling_server)[:1]
  with pytest.raises(download.DownloadError) as info:
    download.download("mnist", tmp_path, sources=sources, log=lines.append, deadline_seconds=1.5)
  took = time.monotonic() - started
  assert 1.5 <= took < 5, took
  message = str(info.value)
  assert "\n" not in message and "1.5 s deadline" in message and "--deadline-seconds" in message
  assert any("downloading" in l for l in lines)
  assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # The partial file is gone.


# --- 9 and 10: fast --help, and the sample data with every default ---


def test_help_answers_without_importing_beam():
  started = time.monotonic()
  result = run("pipeline.build_tfrecords", "--help", timeout=60)
  assert result.returncode == 0 and "--max-reject-fraction" in result.stdout
  assert "--verify-data" in result.stdout and result.stderr == ""
  assert time.monotonic() - started < 3
  probe = subprocess.run(
    [
      sys.executable,
      "-c",
      "import sys, pipeline.build_tfrecords; "
      "print(sorted(m for m in ('apache_beam', 'tensorflow') if m in sys.modules))",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert probe.stdout.strip() == "[]", probe.stderr


def test_sample_mnist_converts_and_verifies_with_every_default(tmp_path):
  # make sample-data && make preprocess RAW=data/sample/raw: the MNIST sample
  # must hold more training images than the spec's default validation split.
  sample_data.generate(str(tmp_path / "raw"), names=("mnist",), seed=0)
  result = build(tmp_path / "raw", tmp_path / "out", dataset="mnist", check=True)
  assert "rejected 0" in result.stderr
  verified = run(
    "pipeline.build_tfrecords",
    "--verify-data",
    "--dataset",
    "mnist",
    "--out-dir",
    tmp_path / "out",
    check=True,
  )
  assert "mnist: verified" in verified.stderr
