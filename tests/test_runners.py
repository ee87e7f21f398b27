"""The Beam job on real runners: local default, portable Job API with a worker pool, a Dask cluster.

Each engine is started for real, as separate processes on 127.0.0.1 (the way
Flink or Spark on Kubernetes reach a Beam worker-pool sidecar, and the way a
Dask cluster runs), and the job must write byte-identical shards, metadata.json
and rejects.jsonl on every one of them, with no work files left behind. The
input has rejects of both kinds (found while listing, found while converting),
so the per-shard sidecars that carry stats and rejects back are exercised too.
The parser tests check that every runner's own options are accepted, and that
the runner command lines of docs/data.md are ones the job accepts.
"""

import contextlib
import io
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline import build_tfrecords
from pipeline import options as job_options
from pipeline import outdir
from preprocess import sample_data
from tests.conftest import BIN
from tests.conftest import ROOT

DATASETS = ("cifar10", "catdog")
JOB_FLAGS = ("--num-shards", "5", "--validation-size", "40", "--progress-seconds", "0")
# Outputs of the local default run, compared file by file with every other runner.
EXPECTED_REJECTS = {
  "cifar10": [
    ("cifar-10-batches-bin/data_batch_2.bin", 5),
    ("cifar-10-batches-bin/data_batch_2.bin", 9),
  ],
  "catdog": [
    ("test/bird/bird.1.jpg", None),
    ("train/cat/cut.jpg", None),
    ("train/cat/empty.jpg", None),
    ("train/cat/scan.tiff", None),
  ],
}


def _env():
  # The worker pool starts SDK workers as plain `python`: it must be the venv's.
  return dict(
    os.environ,
    PYTHONPATH=str(ROOT),
    PATH=f"{BIN}:{os.environ.get('PATH', '')}",
    TF_CPP_MIN_LOG_LEVEL="2",
  )


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _listening(port):
  with socket.socket() as s:
    s.settimeout(0.5)
    return s.connect_ex(("127.0.0.1", port)) == 0


class _Processes:
  """Background processes of one engine, each in its own process group, logged to files."""

  def __init__(self, log_dir):
    self._log_dir = pathlib.Path(log_dir)
    self._procs = []

  def start(self, name, cmd):
    log = open(self._log_dir / f"{name}.log", "wb")
    proc = subprocess.Popen(
      [str(c) for c in cmd],
      cwd=ROOT,
      env=_env(),
      stdout=log,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )
    log.close()
    self._procs.append((name, proc))
    return proc

  def logs(self):
    return "\n".join(
      f"--- {name}\n{(self._log_dir / f'{name}.log').read_text()[-2000:]}"
      for name, _ in self._procs
    )

  def wait_until(self, what, ready, timeout=90):
    """Polls `ready()` until true; fails with the logs if it is not within `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      dead = [name for name, p in self._procs if p.poll() is not None]
      if dead:
        pytest.fail(f"{', '.join(dead)} exited while waiting for {what}\n{self.logs()}")
      if ready():
        return
      time.sleep(0.5)
    pytest.fail(f"{what} not ready after {timeout} s\n{self.logs()}")

  def stop(self):
    """SIGTERM to each process group (SDK workers and Dask nannies' children included), then SIGKILL."""
    for _, proc in self._procs:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    for _, proc in self._procs:
      with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
      with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()


def build(raw, out, *flags, check=True):
  """Runs the job on every data set of `raw` and returns the CompletedProcesses and wall time."""
  results, started = [], time.time()
  for dataset in DATASETS:
    cmd = [
      sys.executable,
      "-m",
      "pipeline.build_tfrecords",
      "--dataset",
      dataset,
      "--raw-dir",
      str(raw),
      "--out-dir",
      str(out),
      *JOB_FLAGS,
      *flags,
    ]
    result = subprocess.run(
      cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, check=False
    )
    if check and result.returncode != 0:
      pytest.fail(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    results.append(result)
  return results, time.time() - started


def assert_same_files(expected, actual):
  """Every file, hidden ones included, byte-identical; nothing more, nothing less."""
  want = sorted(p.relative_to(expected) for p in expected.rglob("*"))
  got = sorted(p.relative_to(actual) for p in actual.rglob("*"))
  assert got == want
  for rel in want:
    if (expected / rel).is_file():
      assert (actual / rel).read_bytes() == (expected / rel).read_bytes(), rel


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """Small CIFAR-10 and cat/dog sample data with bad records and bad files among them."""
  root = tmp_path_factory.mktemp("raw")
  sample_data.generate(str(root), DATASETS, seed=5)
  batch = root / "cifar10" / "cifar-10-batches-bin" / "data_batch_2.bin"
  data = bytearray(batch.read_bytes())
  data[5 * 3073], data[9 * 3073] = 12, 255  # label bytes out of range: rejected by the workers
  batch.write_bytes(bytes(data))
  catdog = root / "catdog"
  victim = sorted((catdog / "train" / "dog").glob("*.jpg"))[0]
  (catdog / "train" / "cat" / "empty.jpg").write_bytes(b"")  # rejected by a worker
  (catdog / "train" / "cat" / "cut.jpg").write_bytes(victim.read_bytes()[:300])  # by a worker
  (catdog / "train" / "cat" / "scan.tiff").write_text("not an image")  # while listing
  (catdog / "test" / "bird").mkdir()
  shutil.copy(victim, catdog / "test" / "bird" / "bird.1.jpg")  # while listing
  return root


@pytest.fixture(scope="module")
def local_out(raw, tmp_path_factory):
  out = tmp_path_factory.mktemp("local")
  _, seconds = build(raw, out)
  print(f"local default: {seconds:.1f} s")
  return out


@pytest.fixture(scope="module")
def job_service(tmp_path_factory):
  """A portable Job API server and an SDK worker pool, as separate processes; yields their flags."""
  procs = _Processes(tmp_path_factory.mktemp("portable-logs"))
  try:
    job_port, pool_port = _free_port(), _free_port()
    procs.start(
      "job_service",
      [
        sys.executable,
        "-m",
        "apache_beam.runners.portability.local_job_service_main",
        "--port",
        job_port,
      ],
    )
    procs.start(
      "worker_pool",
      [
        sys.executable,
        "-m",
        "apache_beam.runners.worker.worker_pool_main",
        "--service_port",
        pool_port,
      ],
    )
    procs.wait_until(
      "job service and worker pool", lambda: _listening(job_port) and _listening(pool_port)
    )
    yield (
      procs,
      [
        "--runner=PortableRunner",
        f"--job_endpoint=localhost:{job_port}",
        "--environment_type=EXTERNAL",
        f"--environment_config=localhost:{pool_port}",
      ],
    )
  finally:
    procs.stop()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
  """A `dask scheduler` and two `dask worker` processes on 127.0.0.1; yields (client, address)."""
  from distributed import Client

  procs = _Processes(tmp_path_factory.mktemp("dask-logs"))
  client = None
  try:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs.start(
      "scheduler",
      [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
    )
    procs.wait_until("dask scheduler", lambda: _listening(port))
    for i in (1, 2):
      procs.start(
        f"worker{i}",
        [
          BIN / "dask",
          "worker",
          f"tcp://{address}",
          "--host",
          "127.0.0.1",
          "--nworkers",
          "1",
          "--nthreads",
          "1",
          "--no-dashboard",
        ],
      )
    client = Client(address, timeout=30)
    procs.wait_until("two dask workers", lambda: len(client.scheduler_info()["workers"]) == 2)
    client.get_task_stream()  # Installs the scheduler's task-stream plugin before the job runs.
    yield client, address
  finally:
    if client is not None:
      client.close()
    procs.stop()


def test_local_default_writes_shards_metadata_and_every_reject(local_out):
  for dataset in DATASETS:
    out = local_out / dataset
    rows = [json.loads(l) for l in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["index"]) for r in rows] == EXPECTED_REJECTS[dataset]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["records"]["rejected"] == len(EXPECTED_REJECTS[dataset])
    assert meta["records"]["read"] == meta["records"]["written"] + meta["records"]["rejected"]
    shards = sorted(p.name for p in out.glob("*.tfrecord"))
    assert shards == sorted(s["file"] for split in meta["splits"].values() for s in split["shards"])
    assert len(shards) == 15
    # No sidecars, work directories or temporary files are left behind.
    assert sorted(p.name for p in out.iterdir()) == sorted(
      shards + [".lock", "metadata.json", "rejects.jsonl", "skipped.jsonl"]
    )
    assert (out / ".lock").read_text() == ""  # Released: no holder named.


@pytest.mark.slow
def test_portable_job_api_with_external_worker_pool_gives_identical_output(
  raw, local_out, job_service, tmp_path
):
  procs, flags = job_service
  results, seconds = build(raw, tmp_path, *flags)
  print(f"portable Job API + worker pool: {seconds:.1f} s")
  assert all("converting with PortableRunner" in r.stderr for r in results)
  assert_same_files(local_out, tmp_path)
  # The SDK workers really ran in the pool, not in the job's own process.
  assert "Starting worker with command" in procs.logs()


@pytest.mark.slow
def test_dask_cluster_gives_identical_output_and_uses_both_workers(
  raw, local_out, dask_cluster, tmp_path
):
  client, address = dask_cluster
  started = time.time()
  results, seconds = build(raw, tmp_path, "--runner=DaskRunner", f"--dask_client_address={address}")
  print(f"Dask cluster, two workers: {seconds:.1f} s")
  assert all("DaskRunner" in r.stderr for r in results)
  assert_same_files(local_out, tmp_path)
  # Each shard task is a partition of its own, so the work spreads over the workers.
  workers = {t["worker"] for t in client.get_task_stream(start=started)}
  assert len(workers) == 2, workers


def test_a_failed_run_leaves_no_sidecars_or_temporary_files(raw, tmp_path):
  """A task that cannot publish its shard fails the run; the other tasks' work files are removed."""
  out = tmp_path / "catdog"
  (out / "train-00002-of-00005.tfrecord").mkdir(parents=True)  # A directory where a shard must go.
  cmd = [
    sys.executable,
    "-m",
    "pipeline.build_tfrecords",
    "--dataset",
    "catdog",
    "--raw-dir",
    str(raw),
    "--out-dir",
    str(tmp_path),
    *JOB_FLAGS,
    "--overwrite",
  ]
  result = subprocess.run(
    cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, check=False
  )
  assert result.returncode != 0
  assert result.stderr.splitlines()[-1].startswith("error: "), result.stderr[-3000:]
  left = sorted(p.name for p in out.iterdir())
  assert "metadata.json" not in left
  # No .work-* directory, no .*.tmp-* file; the lock file stays, released.
  assert [n for n in left if n.startswith(".")] == [".lock"], left
  assert (out / ".lock").read_text() == ""


def test_the_driver_reads_exactly_the_sidecars_of_the_planned_shards(tmp_path):
  """Sidecars of other shards and half-written temporaries are ignored; a missing one is left out."""
  from pipeline import plan

  tasks = [plan.ShardTask("train", i, 3, ()) for i in range(3)]
  for task in tasks[:2] + [plan.ShardTask("train", 0, 2, ())]:
    stats = {
      "split": "train",
      "index": task.index,
      "file": task.filename,
      "read": 2,
      "written": 1,
      "rejected": 1,
      "label_counts": [1, 0],
    }
    rejects = [{"file": f"f{task.index}", "index": 7, "reason": "r", "split": "train"}]
    pathlib.Path(outdir.sidecar_path(str(tmp_path), task.filename)).write_text(
      json.dumps({"stats": stats, "rejects": rejects})
    )
  (tmp_path / (tasks[2].filename + outdir.SIDECAR_SUFFIX + ".tmp-0")).write_text("{")
  stats, rejects = outdir.read_sidecars(str(tmp_path), tasks)
  assert [s["file"] for s in stats] == [tasks[0].filename, tasks[1].filename]
  assert [r["file"] for r in rejects] == ["f0", "f1"]


# --- the parser -------------------------------------------------------------


def _parse(*beam_flags):
  return build_tfrecords.parse_args(
    ["--dataset", "cifar10", "--raw-dir", "r", "--out-dir", "o", *beam_flags]
  )[1]


def _parse_error(*beam_flags):
  err = io.StringIO()
  with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
    _parse(*beam_flags)
  assert exit_info.value.code == 2
  assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
  return err.getvalue()


@pytest.mark.parametrize(
  "runner", ["DaskRunner", "daskrunner", "dask", "apache_beam.runners.dask.dask_runner.DaskRunner"]
)
def test_dask_runner_resolves_by_short_name_and_its_options_are_accepted(runner):
  from apache_beam.options.pipeline_options import StandardOptions
  from apache_beam.runners.dask.dask_runner import DaskOptions

  options = _parse(
    f"--runner={runner}", "--dask_client_address", "127.0.0.1:8786", "--dask_connection_timeout=30"
  )
  assert options.view_as(StandardOptions).runner == job_options.DASK_RUNNER
  dask = options.view_as(DaskOptions)
  assert (dask.address, dask.timeout, dask.partition_size) == ("127.0.0.1:8786", 30, 1)


def test_dask_partitioning_given_by_the_user_is_kept():
  from apache_beam.runners.dask.dask_runner import DaskOptions

  dask = _parse("--runner=DaskRunner", "--dask_npartitions=3").view_as(DaskOptions)
  assert (dask.npartitions, dask.partition_size) == (3, None)


@pytest.mark.parametrize(
  "flags",
  [
    [
      "--runner=FlinkRunner",
      "--flink_master=localhost:8081",
      "--environment_type=EXTERNAL",
      "--environment_config=localhost:50000",
      "--parallelism=4",
    ],
    [
      "--runner=SparkRunner",
      "--spark_master_url=spark://spark:7077",
      "--environment_type=EXTERNAL",
      "--environment_config=localhost:50000",
    ],
    [
      "--runner=PortableRunner",
      "--job_endpoint=localhost:8099",
      "--artifact_endpoint=localhost:8098",
      "--environment_type=EXTERNAL",
      "--environment_config=localhost:50000",
    ],
    [
      "--runner=DataflowRunner",
      "--project=p",
      "--region=europe-west1",
      "--temp_location=gs://b/tmp",
      "--setup_file=./setup.py",
      "--sdk_container_image=registry/cnn-pipeline:beam",
    ],
  ],
)
def test_cluster_runner_options_are_accepted(flags):
  from apache_beam.options.pipeline_options import StandardOptions

  options = _parse(*flags)
  assert options.view_as(StandardOptions).runner == flags[0].split("=", 1)[1]
  given = options.get_all_options(drop_default=True)
  assert given["environment_type" if "Dataflow" not in flags[0] else "project"]


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--runner=NoSuchRunner"], "--runner=NoSuchRunner: unknown runner"),
    (["--runner=no_such_module.Runner"], "cannot import no_such_module"),
    (
      ["--runner=DaskRunner", "--dask_no_such_option=1"],
      "unrecognized arguments: --dask_no_such_option",
    ),
    (["--direct_running_mode=multi_threading"], "loses records"),
  ],
)
def test_bad_runner_flags_are_one_line_errors(flags, message):
  assert message in _parse_error(*flags)


def _readme_commands():
  """The `python -m pipeline.build_tfrecords ...` lines of the shell blocks of the README and
  docs/data.md (where the runner commands live), continuations joined."""
  blocks, block, language = [], None, None
  text = (ROOT / "README.md").read_text() + "\n" + (ROOT / "docs" / "data.md").read_text()
  for line in text.splitlines():
    if line.startswith("```"):
      if block is None:
        block, language = [], line[3:].strip()
      else:
        if language in ("", "bash", "sh"):
          blocks.append("\n".join(block))
        block = None
    elif block is not None:
      block.append(line)
  commands = []
  for text in blocks:
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
      line = line.split(" #", 1)[0].strip()
      if line.startswith("python -m pipeline.build_tfrecords ") and "--help" not in line:
        commands.append(line)
  return commands


def test_readme_runner_commands_are_accepted_by_the_job_parser():
  from apache_beam.options.pipeline_options import StandardOptions

  commands = _readme_commands()
  runners = set()
  for command in commands:
    argv = shlex.split(command)[3:]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
      try:
        _, options = build_tfrecords.parse_args(argv)
      except SystemExit:
        pytest.fail(f"README command refused: {command}\n{err.getvalue()}")
    runners.add(options.view_as(StandardOptions).runner.rsplit(".", 1)[-1])
  assert {
    "FlinkRunner",
    "SparkRunner",
    "DataflowRunner",
    "PortableRunner",
    "DaskRunner",
  } <= runners, commands
