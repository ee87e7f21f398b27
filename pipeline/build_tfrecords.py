"""The Beam job: raw files of each registered data set -> sharded TFRecords + metadata.json.

    python -m pipeline.build_tfrecords --dataset cifar10 --raw-dir data/raw --out-dir data/tfrecords

Flow: list and check the raw files as the data set's spec says
(preprocess/datasets/) and plan the shards on the driver (pipeline/plan.py);
convert the shards in parallel with Beam
(pipeline/convert.py); then check that every record read was written or
rejected, and write `rejects.jsonl` and, last and atomically, `metadata.json`
(the typed contract in preprocess/schema.py).
Trainers trust only `metadata.json`, so a failed run never looks complete.

Flags this module does not know are handed to Beam as pipeline options, e.g.
`--runner=DataflowRunner --project=... --temp_location=gs://...`, with every
option of the runner named (`--runner=DaskRunner --dask_client_address=...`).
Without a runner flag it runs on this machine with one worker process per core.
"""

import argparse
import atexit
import collections
import contextlib
import importlib
import json
import logging
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid

# Only light imports here: --help and flag errors answer before Beam (about
# 3 s to import) is loaded. Beam and the modules that need it are imported
# inside the functions that use them.
from preprocess import cli
from preprocess import datasets as specs
from preprocess import schema
from preprocess.errors import DataFormatError

METADATA = schema.METADATA_FILE
REJECTS = "rejects.jsonl"
# Runners Beam itself does not resolve by short name.
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
EXTRA_RUNNERS = (DASK_RUNNER,)
# The default --max-reject-fraction. The real data sets lose far less: CIFAR-10
# and MNIST nothing, Kaggle's cats-vs-dogs about 2 of 25,000 files. Losing a
# tenth of a split means something systematic (wrong folder, wrong labels, an
# --image-size every image is refused at), not a few broken files.
MAX_REJECT_FRACTION = 0.1
# What to install when a runner's module does not import.
RUNNER_EXTRAS = {
  "dask": "apache-beam[dask]",
  "dataflow": "apache-beam[gcp]",
  "interactive": "apache-beam[interactive]",
}


class UsageError(Exception):
  """A bad flag or flag combination; reported as one line."""


def parse_args(argv):
  """Splits argv into this job's flags and the Beam pipeline flags."""
  parser = cli.ArgumentParser(
    prog="python -m pipeline.build_tfrecords",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  names = specs.names()
  parser.add_argument("--dataset", required=True, choices=names + ("all",))
  parser.add_argument(
    "--raw-dir",
    help=f"Raw data root: holds {', '.join(n + '/' for n in names)} "
    "(required unless --verify-data).",
  )
  parser.add_argument(
    "--out-dir", required=True, help="Output root; each data set goes to OUT/<dataset>/."
  )
  parser.add_argument(
    "--num-shards",
    type=int,
    default=None,
    help="Shards per split (default: about 4,096 records a shard, a power of two, at least 4).",
  )
  parser.add_argument(
    "--validation-size",
    type=int,
    default=None,
    help="Training records moved to a validation split (default: the data set's, "
    + ", ".join(f"{n} {specs.get(n).validation_size}" for n in names)
    + ").",
  )
  parser.add_argument(
    "--image-size",
    type=int,
    default=150,
    help="Image folders (catdog): side of the square output; shorter side resized "
    "to it, then centre-cropped.",
  )
  parser.add_argument(
    "--image-format",
    choices=schema.IMAGE_FORMATS,
    default="jpeg",
    help="Image folders (catdog): encoding in the shards (CIFAR-10 and MNIST are "
    "always PNG, lossless).",
  )
  parser.add_argument(
    "--download", action="store_true", help="Fetch missing raw data first (official URLs)."
  )
  parser.add_argument(
    "--overwrite", action="store_true", help="Replace an existing output of the same data set."
  )
  parser.add_argument(
    "--progress-seconds",
    type=float,
    default=10.0,
    help="Log converted shards and records this often (0: only the final summary).",
  )
  parser.add_argument(
    "--max-reject-fraction",
    type=float,
    default=MAX_REJECT_FRACTION,
    help="Fail the run, writing no metadata.json, when a split loses more than "
    "this fraction of its records to rejects (default %(default)s: the real "
    "data sets lose almost none, so more means something systematic). A split "
    "with no records always fails.",
  )
  parser.add_argument(
    "--verify-data",
    action="store_true",
    help="Convert nothing: check an existing output against its metadata.json "
    "(every shard's sha256, framing and CRCs, and the first record of each "
    "split). make preprocess runs it after the job.",
  )
  parser.add_argument(
    "--verbose",
    action="store_true",
    help="Show Beam's and the workers' own log lines and full tracebacks (they "
    "always go to a log file whose path is printed when a run fails).",
  )
  args, beam_args = parser.parse_known_args(argv)
  args.log_file = os.devnull  # main() makes one per run.
  if args.num_shards is not None and args.num_shards < 1:
    parser.error("--num-shards must be at least 1")
  if args.image_size < 8:
    parser.error("--image-size must be at least 8")
  if args.validation_size is not None and args.validation_size < 0:
    parser.error("--validation-size must not be negative")
  if not math.isfinite(args.progress_seconds) or args.progress_seconds < 0:
    parser.error(f"--progress-seconds must be a number >= 0, got {args.progress_seconds}")
  if not 0 <= args.max_reject_fraction <= 1:  # Also refuses nan.
    parser.error(f"--max-reject-fraction must be between 0 and 1, got {args.max_reject_fraction}")
  if "://" not in args.out_dir and os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
    parser.error(f"--out-dir {args.out_dir}: exists and is not a folder")
  if args.verify_data:
    if beam_args:
      parser.error(f"unrecognized arguments: {' '.join(beam_args)} (--verify-data runs no job)")
    return args, None
  if args.raw_dir is None:
    parser.error("the following arguments are required: --raw-dir")
  if "://" not in args.raw_dir and os.path.exists(args.raw_dir) and not os.path.isdir(args.raw_dir):
    parser.error(f"--raw-dir {args.raw_dir}: exists and is not a folder")
  try:
    options = beam_options(beam_args)
  except UsageError as e:
    parser.error(str(e))
  return args, options


def beam_options(beam_args):
  """Pipeline options from the leftover flags, with a local default that uses every core.

  The module of the runner named by `--runner` is imported first: some runners
  (Dask) register their option classes only then, and an option class Beam has
  not seen makes its flags unknown.

  Raises:
    UsageError: A flag Beam does not know either, a runner that does not
      import, or an unsafe runner mode.
  """
  from apache_beam.options.pipeline_options import DirectOptions  # pylint: disable=g-import-not-at-top
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  from apache_beam.options.pipeline_options import StandardOptions  # pylint: disable=g-import-not-at-top

  runner = _import_runner(beam_args)
  options = PipelineOptions(beam_args)
  known = set(PipelineOptions([]).get_all_options(drop_default=False))
  given = options.get_all_options(drop_default=True, retain_unknown_options=True)
  unknown = sorted(set(given) - known)
  # Values of "--flag value" pairs are fine; other bare words are not.
  stray = [
    a
    for i, a in enumerate(beam_args)
    if not a.startswith("--")
    and (i == 0 or not beam_args[i - 1].startswith("--") or "=" in beam_args[i - 1])
  ]
  if unknown or stray:
    raise UsageError(f"unrecognized arguments: {' '.join(['--' + u for u in unknown] + stray)}")
  direct = options.view_as(DirectOptions)
  if direct.direct_running_mode == "multi_threading":
    # Seen here with Beam 2.77: 8 of 12 multi_threading runs lost records.
    raise UsageError(
      "--direct_running_mode=multi_threading loses records in Beam 2.77; "
      "use multi_processing or in_memory"
    )
  standard = options.view_as(StandardOptions)
  if runner in EXTRA_RUNNERS:
    standard.runner = runner
  if runner == DASK_RUNNER and not {"npartitions", "partition_size"} & set(given):
    # Dask's default puts up to 128 elements in one partition, that is on one
    # worker; one shard task is work enough for a partition of its own.
    options.view_as(sys.modules[DASK_RUNNER.rsplit(".", 1)[0]].DaskOptions).partition_size = 1
  if standard.runner is None:
    # The default runner first tries to download the Prism runner binary, which
    # needs the internet; FnApiRunner runs here offline, one worker per core.
    standard.runner = "FnApiRunner"
    if "direct_running_mode" not in given:
      direct.direct_running_mode = "multi_processing"
    if "direct_num_workers" not in given:
      direct.direct_num_workers = os.cpu_count() or 1
    _quiet_local_workers(given.get("default_sdk_harness_log_level", "ERROR"))
  return options


def _import_runner(beam_args):
  """Imports the module of the `--runner` in `beam_args`; returns its dotted path, or None.

  Short names resolve as Beam resolves them (case-insensitive, "Runner"
  optional: `--runner=dask`, `--runner=DaskRunner`), plus `EXTRA_RUNNERS`;
  anything else must be a `module.Class` path.
  """
  from apache_beam.options.pipeline_options import StandardOptions  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  parser.add_argument("--runner")
  name = parser.parse_known_args(beam_args)[0].runner
  if name is None:
    return None
  paths = {
    p.rsplit(".", 1)[-1].lower(): p for p in StandardOptions.ALL_KNOWN_RUNNERS + EXTRA_RUNNERS
  }
  path = paths.get(name.lower(), paths.get(name.lower() + "runner", name))
  if "." not in path:
    raise UsageError(
      f"--runner={name}: unknown runner; use one of "
      f"{', '.join(sorted(p.rsplit('.', 1)[-1] for p in paths.values()))} "
      "or a module.Class path"
    )
  module = path.rsplit(".", 1)[0]
  try:
    importlib.import_module(module)
  except ImportError as e:
    extra = next((v for k, v in RUNNER_EXTRAS.items() if k in path.lower()), None)
    raise UsageError(
      f"--runner={name}: cannot import {module} ({e})"
      + (f"; pip install '{extra}'" if extra else "")
    ) from None
  return path


def _quiet_local_workers(level):
  """Sets the log level of FnApiRunner's worker processes.

  They log every bundle at INFO, and warn at start-up about a main-session
  file that local runs do not use, all to our stderr. FnApiRunner passes them
  no pipeline options, so the level reaches them through the options file that
  the SDK harness reads at start-up (PIPELINE_OPTIONS_FILE).
  """
  if "PIPELINE_OPTIONS_FILE" in os.environ:
    return
  fd, path = tempfile.mkstemp(prefix="beam-worker-options-", suffix=".json")
  with os.fdopen(fd, "w") as f:
    json.dump({"options": {"default_sdk_harness_log_level": level}}, f)
  atexit.register(os.remove, path)
  os.environ["PIPELINE_OPTIONS_FILE"] = path


def prepare_out_dir(out_dir, overwrite):
  """Makes `out_dir` ready for a new run; refuses to clobber one without --overwrite."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  ours = [METADATA, REJECTS, "*.tfrecord", ".*.tmp-*", ".work-*/**"]
  existing = [
    m.path
    for pattern in ours
    for m in FileSystems.match([FileSystems.join(out_dir, pattern)])[0].metadata_list
  ]
  if existing and not overwrite:
    raise UsageError(
      f"{out_dir}: output already exists ({len(existing)} files); pass --overwrite to replace it"
    )
  metadata = FileSystems.join(out_dir, METADATA)
  # metadata.json goes first, so an interrupted overwrite never looks complete.
  if FileSystems.exists(metadata):
    FileSystems.delete([metadata])
  rest = [p for p in existing if p != metadata]
  if rest:
    FileSystems.delete(rest)
  if "://" not in out_dir:
    os.makedirs(out_dir, exist_ok=True)


def _read_sidecars(work, tasks):
  """Stats and rejects of the planned shards, from the sidecars their tasks wrote.

  Reads exactly one sidecar per task in `tasks`, whatever else `work` holds;
  a shard without one is left out, and the ledger check names it.

  Returns:
    (list of stats dicts, list of reject dicts), in task order.
  """
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  from pipeline import convert  # pylint: disable=g-import-not-at-top

  found = {m.path for m in FileSystems.match([FileSystems.join(work, "*")])[0].metadata_list}
  stats, rejects = [], []
  for task in tasks:
    path = convert.sidecar_path(work, task.filename)
    if path in found:
      with FileSystems.open(path) as f:
        sidecar = json.loads(f.read().decode("utf-8"))
      stats.append(sidecar["stats"])
      rejects += sidecar["rejects"]
  return stats, rejects


def _remove_work_files(out_dir, work):
  """Deletes the sidecars and the temporary files of failed or retried tasks."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  patterns = [FileSystems.join(work, "*"), FileSystems.join(out_dir, ".*.tmp-*")]
  files = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
  if files:
    FileSystems.delete(files)
  if FileSystems.exists(work):  # The local directory itself.
    FileSystems.delete([work])


def _write_atomically(path, text):
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  from preprocess import atomic  # pylint: disable=g-import-not-at-top

  atomic.write_text(path, text, filesystem=FileSystems)


def convert_dataset(name, args, options, log):
  """Runs the conversion of one data set and returns its `schema.Metadata`.

  Raises:
    DataFormatError: A raw file is structurally broken.
    UsageError: Bad flags for this data set, or existing output.
    RuntimeError: The counts do not add up after the run.
  """
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  from apache_beam.options.pipeline_options import StandardOptions  # pylint: disable=g-import-not-at-top

  from pipeline import convert  # pylint: disable=g-import-not-at-top
  from pipeline import plan  # pylint: disable=g-import-not-at-top

  started = time.time()
  raw = plan.load(name, args.raw_dir, image_size=args.image_size, image_format=args.image_format)
  for split, sources in raw.splits.items():
    if not sum(s.count for s in sources):
      rejected = [r for r in raw.rejects if r.file.split("/", 1)[0] == split]
      example = f" (e.g. {rejected[0].file}: {rejected[0].reason})" if rejected else ""
      raise IncompleteError(
        f"{name}: split {split!r} has no usable records: all "
        f"{len(rejected)} inputs were rejected while listing{example}; "
        "no metadata.json written"
      )
  validation_size = (
    specs.get(name).validation_size if args.validation_size is None else args.validation_size
  )
  try:
    tasks = plan.make_tasks(plan.make_splits(raw.splits, validation_size), args.num_shards)
  except ValueError as e:
    raise UsageError(f"{name}: {e}") from None
  out_dir = FileSystems.join(args.out_dir, name)
  prepare_out_dir(out_dir, args.overwrite)
  work = FileSystems.join(out_dir, f".work-{uuid.uuid4().hex}")
  planned = sum(t.count for t in tasks)
  log(
    f"{name}: {planned} records in {len(tasks)} shards, {len(raw.rejects)} inputs rejected "
    f"while listing; converting with {options.view_as(StandardOptions).runner}"
  )

  def on_death(line):
    _remove_work_files(out_dir, work)
    if line is None:
      log(
        f"error: interrupted; temporary files removed, no metadata.json written for {name} "
        f"(log: {args.log_file})"
      )
    else:
      log(
        f"error: {name}: {line} while converting; temporary files removed, no metadata.json "
        f"written (log: {args.log_file})"
      )
    # Beam's threads that served the dead worker never finish: a normal exit
    # would wait for them forever.
    os._exit(130 if line is None else 1)

  listing_rejects = [dict(r.to_json_dict(), split=r.file.split("/", 1)[0]) for r in raw.rejects]
  try:
    with (
      _Progress(name, out_dir, tasks, args.progress_seconds, log),
      _CapturedStderr(args.log_file, args.verbose),
      _WorkerWatch(on_death),
    ):
      _run_pipeline(
        beam,
        options,
        tasks,
        convert.ConvertShards(
          out_dir, raw.class_names, raw.image_format, raw.image_shape[0], stats_dir=work
        ),
      )
    # Each task's sidecar, not a sink: a sink's output depends on the runner finalizing it.
    stats, shard_rejects = _read_sidecars(work, tasks)
  finally:
    _remove_work_files(out_dir, work)
  rejects = sorted(
    shard_rejects + listing_rejects,
    key=lambda r: (r["file"], -1 if r["index"] is None else r["index"]),
  )
  metadata = _check_and_describe(name, raw, tasks, stats, rejects, validation_size, args)
  lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects)
  _write_atomically(FileSystems.join(out_dir, REJECTS), lines)
  # After the ledger, so the user can read why; before metadata.json, so a
  # split that lost too much never looks complete.
  _check_reject_fractions(name, out_dir, metadata, rejects, args.max_reject_fraction)
  _write_atomically(FileSystems.join(out_dir, METADATA), metadata.to_json())
  counts = metadata.records
  log(
    f"{name}: read {counts.read} = written {counts.written} + rejected "
    f"{counts.rejected} in {time.time() - started:.1f}s -> {out_dir}"
  )
  return metadata


def _run_pipeline(beam, options, tasks, convert_shards):
  # One chain, nothing after the conversion: the Dask runner computes only the
  # last transform of a pipeline, so a branch beside it would never run there.
  with beam.Pipeline(options=options) as p:
    _ = (
      p
      | "PlanShards" >> beam.Create(tasks)  # Create reshuffles: tasks spread over workers.
      | "ConvertShards" >> convert_shards
    )


class IncompleteError(Exception):
  """A run whose output would be incomplete (an empty split, too many rejects); one line."""


def _check_reject_fractions(name, out_dir, metadata, rejects, max_fraction):
  """Raises IncompleteError if a split is empty or lost more than `max_fraction` to rejects.

  Rejects are counted against the split they were read for: the listing's by
  their folder (validation records come from train/), the shards' by shard.
  """
  for split, info in metadata.splits.items():
    lost = [r for r in rejects if r["split"] == split]
    read = info.num_examples + len(lost)
    example = f" (e.g. {lost[0]['file']}: {lost[0]['reason']})" if lost else ""
    where = f"see {out_dir}/{REJECTS}; no metadata.json written"
    if info.num_examples == 0:
      raise IncompleteError(
        f"{name}: split {split!r} has no records: all {read} were rejected{example}; {where}"
      )
    if len(lost) > max_fraction * read:
      raise IncompleteError(
        f"{name}: split {split!r} lost {len(lost)} of {read} records to "
        f"rejects ({len(lost) / read:.1%}, more than --max-reject-fraction "
        f"{max_fraction}){example}; {where}"
      )


# Lines of Beam's and its workers' own logging that say nothing to a user.
_NOISE = re.compile(
  r"apitools not found|Logging handler created|Load pipeline options from file|"
  r"Discarding unparseable args|Using Any for unsupported type|"
  r"Starting finalize_write threads|Pipeline has additional dependencies|"
  r"Missing pipeline option \(runner\)"
)


class _CapturedStderr:
  """Sends file descriptor 2 (Beam's and its worker processes' output) to the run's log file.

  Beam's worker processes inherit the driver's stderr and log to it at INFO
  before they read any option; their tracebacks on failure run to hundreds of
  lines. Everything goes to the log file; the terminal gets the lines that are
  warnings and not known noise, or everything with --verbose. The driver's own
  lines (`log` in main) go to the saved terminal descriptor directly.
  """

  terminal = None  # A file object on the real stderr while a capture is active.

  def __init__(self, log_path, verbose):
    self._log_path, self._verbose = log_path, verbose

  def __enter__(self):
    sys.stderr.flush()
    self._saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    _CapturedStderr.terminal = os.fdopen(os.dup(self._saved), "w", buffering=1)
    self._thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True)
    self._thread.start()
    return self

  def _pump(self, read_end):
    with os.fdopen(read_end, "rb") as pipe, open(self._log_path, "ab") as log:
      for line in pipe:
        # Keep draining the pipe even if the log cannot be written (disk full):
        # a full pipe would block every worker.
        with contextlib.suppress(OSError):
          log.write(line)
          log.flush()
        text = line.decode("utf-8", "replace")
        if self._verbose or (text.startswith("WARNING") and not _NOISE.search(text)):
          os.write(self._saved, line)

  def __exit__(self, *exc):
    sys.stderr.flush()
    os.dup2(self._saved, 2)
    # Worker processes that are still shutting down hold the pipe open; their
    # last lines still reach the log file through the daemon thread.
    self._thread.join(timeout=2)
    _CapturedStderr.terminal.close()
    _CapturedStderr.terminal = None


class _WorkerWatch:
  """Turns the death of a local Beam worker process into an error instead of a hang.

  With FnApiRunner in multi_processing mode, a worker process that dies (killed,
  out of memory) makes its supervising thread raise and the pipeline wait
  forever for the bundle it held. This watches for that thread's error,
  ends the worker processes this run started (`stop_workers`) and calls
  `on_death`, which cleans up, prints one line and exits the process.
  """

  _PREFIX = "Worker subprocess exited with return code "
  ending = False  # Set when the main thread is already reporting an interruption.

  def __init__(self, on_death):
    self._on_death = on_death  # Called with `describe()`'s line; must not return.
    self.died = None  # The worker's return code, once one died.

  def __enter__(self):
    self._previous = threading.excepthook
    threading.excepthook = self._hook
    return self

  def _hook(self, hook_args):
    text = str(hook_args.exc_value)
    if isinstance(hook_args.exc_value, RuntimeError) and text.startswith(self._PREFIX):
      if self.died is None and not _WorkerWatch.ending:
        self.died = int(text[len(self._PREFIX) :].split()[0])
        if self.died in (-signal.SIGINT, 128 + signal.SIGINT):
          # Ctrl-C reached the worker first: an interruption, not a crash.
          self.stop_workers()
          self._on_death(None)
        # The main thread waits on the lost bundle in a way no signal wakes
        # (tried: SIGINT to it); end the run from here.
        self.stop_workers()
        self._on_death(self.describe())
      return
    self._previous(hook_args)

  def __exit__(self, *exc):
    threading.excepthook = self._previous

  def describe(self):
    code = self.died
    how = (
      f"killed by signal {-code}"
      if code < 0
      else f"exit status {code}, killed by signal {code - 128}"
      if code > 128
      else f"exit status {code}"
    )
    return f"a Beam worker process died ({how}; out of memory or killed?)"

  @staticmethod
  def stop_workers():
    """Kills the worker processes this driver started (its own descendants only)."""
    import psutil  # pylint: disable=g-import-not-at-top

    workers = [
      p
      for p in psutil.Process().children(recursive=True)
      if "sdk_worker_main" in " ".join(_cmdline(p))
    ]
    for p in workers:
      with contextlib.suppress(psutil.Error):
        p.kill()
    psutil.wait_procs(workers, timeout=5)


def _cmdline(process):
  try:
    return process.cmdline()
  except Exception:  # pylint: disable=broad-except  # Exited meanwhile.
    return []


class _Progress:
  """Logs finished shards and records every few seconds while the pipeline runs.

  Shards appear under their final names only when complete, so counting them in
  the output directory works the same for every runner, local or remote.
  """

  def __init__(self, name, out_dir, tasks, seconds, log):
    self._name, self._out_dir, self._seconds, self._log = name, out_dir, seconds, log
    self._records = {t.filename: t.count for t in tasks}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def __enter__(self):
    if self._seconds > 0:
      self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join()

  def _run(self):
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

    while not self._stop.wait(self._seconds):
      found = FileSystems.match([FileSystems.join(self._out_dir, "*.tfrecord")])[0].metadata_list
      done = [os.path.basename(m.path) for m in found if os.path.basename(m.path) in self._records]
      self._log(
        f"{self._name}: {len(done)}/{len(self._records)} shards, "
        f"{sum(self._records[d] for d in done)}/{sum(self._records.values())} records read"
      )


def _check_and_describe(name, raw, tasks, stats, rejects, validation_size, args):
  """Checks that nothing was lost and builds the `schema.Metadata`."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  from pipeline import plan  # pylint: disable=g-import-not-at-top

  by_shard = {}
  for s in stats:  # A retried bundle may report a shard twice; its content is the same.
    by_shard[(s["split"], s["index"])] = s
  missing = [t.filename for t in tasks if (t.split, t.index) not in by_shard]
  if missing:
    raise RuntimeError(f"{name}: shards never written: {', '.join(missing)}")
  read = sum(s["read"] for s in by_shard.values()) + len(raw.rejects)
  written = sum(s["written"] for s in by_shard.values())
  if read != written + len(rejects) or read != sum(t.count for t in tasks) + len(raw.rejects):
    raise RuntimeError(
      f"{name}: records read ({read}) != written ({written}) + rejected ({len(rejects)})"
    )
  splits = {}
  for task in tasks:
    s = by_shard[(task.split, task.index)]
    split = splits.setdefault(
      task.split,
      schema.SplitInfo(num_examples=0, shards=[], label_counts=[0] * len(raw.class_names)),
    )
    split.num_examples += s["written"]
    split.shards.append(
      schema.ShardInfo(
        file=s["file"], num_examples=s["written"], sha256=s["sha256"], num_bytes=s["num_bytes"]
      )
    )
    split.label_counts = [a + b for a, b in zip(split.label_counts, s["label_counts"])]
  reject_counts = collections.Counter(r["split"] for r in rejects)
  metadata = schema.Metadata(
    dataset=name,
    class_names=raw.class_names,
    num_classes=len(raw.class_names),
    image_shape=list(raw.image_shape),
    image_format=raw.image_format,
    feature_spec=schema.FEATURE_SPEC,
    splits=splits,
    augmentation=specs.get(name).policy(),
    records=schema.RecordCounts(read=read, written=written, rejected=len(rejects)),
    rejects={
      "file": REJECTS,
      "count": len(rejects),
      "by_split": dict(sorted(reject_counts.items())),
    },
    sources={rel: {"sha256": plan.sha256_file(path)} for rel, path in sorted(raw.files.items())},
    options={
      "validation_size": validation_size,
      "num_shards": args.num_shards,
      "image_size": raw.image_size,
    },
  )
  metadata.validate(FileSystems.join(args.out_dir, name, METADATA))
  return metadata


def _present(name, raw_dir):
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  return FileSystems.exists(FileSystems.join(raw_dir, name))


# Exceptions whose message is already the one line to show: `<file>: <problem>`.
_ONE_LINE_ERRORS = ("ShardFailure", "DownloadError", "DataFormatError", "TFRecordError")
_MARKED = re.compile(r"(?:^|[\s.])(?:{}): (.+)$".format("|".join(_ONE_LINE_ERRORS)))
_LAST_ERROR = re.compile(
  r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Exit|Failure)): (.+)$"
)


def root_cause(error):
  """The one line to show for an exception from a Beam run.

  Beam hands back a worker's failure as one exception whose message holds the
  worker's whole traceback (150 to 250 lines). The root cause is the project's
  own one-line error in it if there is one (a `ShardFailure` or
  `DataFormatError` names the file), else the last `SomeError: message` line,
  which is the innermost exception of a printed traceback.
  """
  if isinstance(error, OSError) and error.filename and error.strerror:
    return f"{error.filename}: {error.strerror}"
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  for line in lines:
    match = _MARKED.search(line)
    if match:
      return _cut_beam_suffix(match.group(1))
  for line in reversed(lines):
    match = _LAST_ERROR.match(line)
    if match:
      return _cut_beam_suffix(f"{match.group(1)}: {match.group(2)}")
  first = next((l for l in lines if not l.startswith("Traceback")), "")
  return _cut_beam_suffix(first) or type(error).__name__


def _cut_beam_suffix(line):
  # Beam appends " [while running 'ConvertShards/ParDo(ConvertShardFn)']".
  return re.sub(r"\s*\[while running '[^']*'\]\s*$", "", line)


def verify(args, log):
  """--verify-data: checks each data set's output under --out-dir; returns the exit code."""
  names = specs.names() if args.dataset == "all" else (args.dataset,)
  if args.dataset == "all":
    names = [n for n in names if os.path.exists(os.path.join(args.out_dir, n, METADATA))] or names[
      :1
    ]
  try:
    for name in names:
      data_dir = os.path.join(args.out_dir, name)
      started = time.time()
      metadata = schema.verify_data(data_dir)
      shards = sum(len(s.shards) for s in metadata.splits.values())
      log(
        f"{name}: verified {shards} shards, "
        f"{sum(s.num_examples for s in metadata.splits.values())} records against "
        f"{data_dir}/{METADATA} (sha256, CRCs, first records) in {time.time() - started:.1f}s"
      )
  except (schema.MetadataError, schema.TFRecordError) as e:
    log(f"error: {e}")
    return 1
  return 0


def main(argv=None):
  args, options = parse_args(sys.argv[1:] if argv is None else argv)

  def log(msg):
    print(msg, file=_CapturedStderr.terminal or sys.stderr, flush=True)

  if args.verify_data:
    return verify(args, log)
  fd, args.log_file = tempfile.mkstemp(prefix="build_tfrecords-", suffix=".log")
  os.close(fd)
  names = specs.names() if args.dataset == "all" else (args.dataset,)
  keep_log = False
  try:
    if args.download:
      from preprocess import download  # pylint: disable=g-import-not-at-top

      for name in names:
        download.download(name, args.raw_dir, log=log)
    elif args.dataset == "all":
      names = [n for n in names if _present(n, args.raw_dir)]
      if not names:
        folders = [n + "/" for n in specs.names()]
        raise UsageError(
          f"{args.raw_dir}: no {', '.join(folders[:-1])} or {folders[-1]} raw "
          "data (use --download or make sample-data)"
        )
    for name in names:
      convert_dataset(name, args, options, log)
  except (DataFormatError, UsageError) as e:
    log(f"error: {e}")
    return 2
  except IncompleteError as e:
    log(f"error: {e} (log: {args.log_file})")
    keep_log = True
    return 1
  except KeyboardInterrupt:
    _WorkerWatch.ending = True  # A worker's SIGINT exit now is part of this, not a crash.
    log(
      "error: interrupted; temporary files removed, no metadata.json written for the data set "
      f"being converted (log: {args.log_file})"
    )
    keep_log = True
    return 130
  except Exception as e:  # pylint: disable=broad-except
    try:
      with open(args.log_file, "a", encoding="utf-8") as f:
        f.write("".join(traceback.format_exception(e)))
    except OSError:
      pass  # /tmp full too: the one line below is still the answer.
    if args.verbose:
      traceback.print_exception(e, file=_CapturedStderr.terminal or sys.stderr)
    log(f"error: {root_cause(e)} (full trace: {args.log_file})")
    keep_log = True
    return 1
  finally:
    if not keep_log:
      os.remove(args.log_file)  # Its path was never printed: nothing to look at.
  return 0


if __name__ == "__main__":
  # Before Beam is imported: its import logs a warning through the root logger
  # ("apitools not found"), which would otherwise install a stderr handler.
  logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING)
  logging.getLogger().handlers[0].addFilter(lambda record: not _NOISE.search(record.getMessage()))
  logging.getLogger("apache_beam").setLevel(logging.WARNING)
  sys.exit(main())
