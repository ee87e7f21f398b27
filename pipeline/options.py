"""The Beam job's command line: its own flags, and the rest as Beam pipeline options.

`parse_args` (used by pipeline/build_tfrecords.py) splits argv into the job's
flags and Beam's; `beam_options` checks Beam's and fills in the local default
(FnApiRunner, one worker process per core). Light imports only at module
level: --help and flag errors answer before Beam (about 3 s to import) loads.
"""

import argparse
import atexit
import contextlib
import importlib
import json
import math
import os
import sys
import tempfile

from preprocess import cli
from preprocess import datasets as specs
from preprocess import schema

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


def parse_args(argv, description=None):
  """Splits argv into this job's flags and the Beam pipeline flags.

  Returns:
    (args, options): the job's flags, and Beam's `PipelineOptions` (None with --verify-data).
  """
  parser = _parser(description)
  args, beam_args = parser.parse_known_args(argv)
  args.log_file = os.devnull  # main() makes one per run.
  return args, _check(parser, args, beam_args)


def _parser(description):
  """The job's own flags, a table of `add_argument`s."""
  parser = cli.ArgumentParser(
    prog="python -m pipeline.build_tfrecords",
    description=description,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  names = specs.names()
  parser.add_argument(
    "--dataset",
    required=True,
    choices=names + ("all",),
    help="Data set to convert, a file of preprocess/datasets/; 'all': each of them in turn.",
  )
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
    "to it, then centre-cropped (default: %(default)s).",
  )
  parser.add_argument(
    "--image-format",
    choices=schema.IMAGE_FORMATS,
    default="jpeg",
    help="Image folders (catdog): encoding in the shards (default: %(default)s; CIFAR-10 and "
    "MNIST are always PNG, lossless).",
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
    help="Log converted shards and records every this many seconds (default: %(default)g; 0: "
    "only the final summary).",
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
  return parser


def _check(parser, args, beam_args):
  """Refuses bad values and combinations (via `parser.error`); returns the Beam options."""
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
    return None
  if args.raw_dir is None:
    parser.error("the following arguments are required: --raw-dir")
  if "://" not in args.raw_dir and os.path.exists(args.raw_dir) and not os.path.isdir(args.raw_dir):
    parser.error(f"--raw-dir {args.raw_dir}: exists and is not a folder")
  try:
    return beam_options(beam_args)
  except UsageError as e:
    parser.error(str(e))


def beam_options(beam_args):
  """Pipeline options from the leftover flags, with a local default that uses every core.

  The module of the runner named by `--runner` is imported first: some runners
  (Dask) register their option classes only then, and an option class Beam has
  not seen makes its flags unknown.

  Raises:
    UsageError: A flag Beam does not know either, a runner that does not
      import, or an unsafe runner mode.
  """
  from apache_beam.options.pipeline_options import DirectOptions
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam.options.pipeline_options import StandardOptions

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
  from apache_beam.options.pipeline_options import StandardOptions

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
  atexit.register(remove_worker_options, path)
  os.environ["PIPELINE_OPTIONS_FILE"] = path


def remove_worker_options(path=None):
  """Deletes the options file `_quiet_local_workers` wrote (also before an `os._exit`, which skips atexit)."""
  path = path or os.environ.get("PIPELINE_OPTIONS_FILE", "")
  if os.path.basename(path).startswith("beam-worker-options-"):
    with contextlib.suppress(OSError):
      os.remove(path)
