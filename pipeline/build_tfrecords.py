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

import collections
import logging
import os
import sys
import tempfile
import time
import traceback
import uuid

# Only light imports here: --help and flag errors answer before Beam (about
# 3 s to import) is loaded. Beam and the modules that need it are imported
# inside the functions that use them.
from pipeline import options as job_options
from pipeline import supervise
from pipeline.options import UsageError
from preprocess import datasets as specs
from preprocess import dirlock
from preprocess import errors
from preprocess import schema
from preprocess.errors import DataFormatError

METADATA = schema.METADATA_FILE
REJECTS = schema.REJECTS_FILE


def parse_args(argv):
  """Splits argv into this job's flags and the Beam pipeline flags (pipeline/options.py)."""
  return job_options.parse_args(argv, description=__doc__)


def convert_dataset(name, args, options, log):
  """Runs the conversion of one data set and returns its `schema.Metadata`.

  Holds the output folder's lock (preprocess/dirlock.py) from before it
  clears an earlier output until metadata.json is written.

  Raises:
    DataFormatError: A raw file is structurally broken.
    UsageError: Bad flags for this data set, or existing output.
    dirlock.LockHeld: Another job writes the same output folder.
    RuntimeError: The counts do not add up after the run.
  """
  from apache_beam.io.filesystems import FileSystems

  from pipeline import outdir
  from pipeline import plan

  started = time.time()
  raw = plan.load(name, args.raw_dir, image_size=args.image_size, image_format=args.image_format)
  _check_listing(name, raw, log)
  validation_size = (
    specs.get(name).validation_size if args.validation_size is None else args.validation_size
  )
  try:
    tasks = plan.make_tasks(plan.make_splits(raw.splits, validation_size), args.num_shards)
  except ValueError as e:
    raise UsageError(f"{name}: {e}") from None
  out_dir = FileSystems.join(args.out_dir, name)
  with dirlock.hold(out_dir, f"python -m pipeline.build_tfrecords --dataset {name}", log) as lock:
    outdir.prepare(out_dir, args.overwrite, log)
    try:
      metadata = _convert_and_check(
        name, raw, tasks, out_dir, validation_size, options, args, log, lock
      )
    except IncompleteError:
      raise  # its ledgers say why; a rerun replaces them
    except BaseException as e:
      if isinstance(e, KeyboardInterrupt):  # no worker may rename a shard into place after this
        supervise.WorkerWatch.ending = True
        supervise.WorkerWatch.stop_workers()
      outdir.remove_incomplete(out_dir)  # no shards without metadata.json are left behind
      raise
  counts = metadata.records
  log(
    f"{name}: read {counts.read} = written {counts.written} + rejected "
    f"{counts.rejected} ({counts.skipped} files skipped) in {time.time() - started:.1f}s "
    f"-> {out_dir}"
  )
  return metadata


def _convert_and_check(name, raw, tasks, out_dir, validation_size, options, args, log, lock):
  """Converts, checks that nothing was lost, writes the ledgers and, last, metadata.json."""
  from apache_beam.io.filesystems import FileSystems
  from apache_beam.options.pipeline_options import StandardOptions

  from pipeline import outdir

  log(
    f"{name}: {sum(t.count for t in tasks)} records in {len(tasks)} shards, "
    f"{len(raw.rejects)} inputs rejected and {len(raw.skipped)} skipped while listing; "
    f"converting with {options.view_as(StandardOptions).runner}"
  )
  stats, shard_rejects = _convert(name, raw, tasks, out_dir, options, args, log, lock)
  listing_rejects = [dict(r.to_json_dict(), split=r.file.split("/", 1)[0]) for r in raw.rejects]
  rejects = sorted(
    shard_rejects + listing_rejects,
    key=lambda r: (r["file"], -1 if r["index"] is None else r["index"]),
  )
  metadata = _check_and_describe(name, raw, tasks, stats, rejects, validation_size, args)
  _warn_empty_classes(name, metadata, log)
  outdir.write_ledger(FileSystems.join(out_dir, outdir.REJECTS), rejects)
  outdir.write_ledger(
    FileSystems.join(out_dir, outdir.SKIPPED), [r.to_json_dict() for r in raw.skipped]
  )
  # After the ledger, so the user can read why; before metadata.json, so a
  # split that lost too much never looks complete.
  _check_reject_fractions(name, out_dir, metadata, rejects, args.max_reject_fraction)
  outdir.write_atomically(FileSystems.join(out_dir, METADATA), metadata.to_json())
  return metadata


def _check_listing(name, raw, log):
  """Stops a run with a split that has no usable input; names images outside the splits."""
  for split, sources in raw.splits.items():
    if not sum(s.count for s in sources):
      rejected = [r for r in raw.rejects if r.file.split("/", 1)[0] == split]
      example = f" (e.g. {rejected[0].file}: {rejected[0].reason})" if rejected else ""
      raise IncompleteError(
        f"{name}: split {split!r} has no usable records: all "
        f"{len(rejected)} inputs were rejected while listing{example}; "
        "no metadata.json written"
      )
  outside = [r for r in raw.skipped if "outside the split folders" in r.reason]
  if outside:
    log(
      f"warning: {name}: {len(outside)} files outside the split folders are not converted "
      f"(e.g. {outside[0].file}); they are listed in skipped.jsonl"
    )


def _warn_empty_classes(name, metadata, log):
  """One line for the classes a split has no record of (they stay in metadata.json too)."""
  empty = [
    f"{split} has no {', '.join(info.empty_classes)} (label counts {info.label_counts})"
    for split, info in metadata.splits.items()
    if info.empty_classes
  ]
  if empty:
    log(
      f"warning: {name}: classes without records: {'; '.join(empty)}; recorded as "
      "empty_classes in metadata.json"
    )


def _convert(name, raw, tasks, out_dir, options, args, log, lock):
  """Runs the Beam pipeline over `tasks`; returns the sidecars' (stats, rejects)."""
  import apache_beam as beam
  from apache_beam.io.filesystems import FileSystems

  from pipeline import convert
  from pipeline import outdir

  work = FileSystems.join(out_dir, f"{outdir.WORK_PREFIX}{uuid.uuid4().hex}")

  def on_death(line, exit_code):
    outdir.remove_work_files(out_dir, work)
    outdir.remove_incomplete(out_dir)
    supervise.PrivateTemp.remove()
    job_options.remove_worker_options()
    lock.release()
    if not supervise.WorkerWatch.first_to_report():
      pass  # the main thread already said how the run ended
    elif line is None:
      how = "interrupted" if exit_code == 130 else "terminated (SIGTERM)"
      log(
        f"error: {how}; temporary files removed, no shards and no metadata.json left for "
        f"{name} (log: {args.log_file})"
      )
    else:
      log(
        f"error: {name}: {line} while converting; temporary files removed, no shards and no "
        f"metadata.json left (log: {args.log_file})"
      )
    # Beam's threads that served the dead worker never finish: a normal exit
    # would wait for them forever.
    os._exit(exit_code)

  try:
    with (
      supervise.Progress(name, out_dir, tasks, args.progress_seconds, log),
      supervise.CapturedStderr(args.log_file, args.verbose),
      supervise.WorkerWatch(on_death),
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
    return outdir.read_sidecars(work, tasks)
  finally:
    outdir.remove_work_files(out_dir, work)


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


def _check_and_describe(name, raw, tasks, stats, rejects, validation_size, args):
  """Checks that nothing was lost and builds the `schema.Metadata`."""
  from apache_beam.io.filesystems import FileSystems

  from pipeline import plan

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
        file=s["file"],
        num_examples=s["written"],
        sha256=s["sha256"],
        num_bytes=s["num_bytes"],
        head_sha256=s["head_sha256"],
      )
    )
    split.label_counts = [a + b for a, b in zip(split.label_counts, s["label_counts"])]
  for split in splits.values():
    split.empty_classes = [c for c, n in zip(raw.class_names, split.label_counts) if not n]
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
    records=schema.RecordCounts(
      read=read, written=written, rejected=len(rejects), skipped=len(raw.skipped)
    ),
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
  from apache_beam.io.filesystems import FileSystems

  return FileSystems.exists(FileSystems.join(raw_dir, name))


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
    print(msg, file=supervise.CapturedStderr.terminal or sys.stderr, flush=True)

  if args.verify_data:
    return verify(args, log)  # Writes nothing: SIGTERM may end it as it ends any process.
  supervise.terminate_on_sigterm()
  fd, args.log_file = tempfile.mkstemp(prefix="build_tfrecords-", suffix=".log")
  os.close(fd)
  keep_log = True
  try:
    with supervise.PrivateTemp():
      _convert_all(args, options, log)
    keep_log = False
  except (DataFormatError, UsageError, dirlock.LockHeld) as e:
    log(f"error: {e}")
    keep_log = False
    return 2
  except IncompleteError as e:
    log(f"error: {e} (log: {args.log_file})")
    return 1
  except KeyboardInterrupt as e:
    # A worker's SIGINT exit now is part of this, not a crash.
    supervise.WorkerWatch.ending = True
    how = "terminated (SIGTERM)" if isinstance(e, supervise.Terminated) else "interrupted"
    if supervise.WorkerWatch.first_to_report():  # else a watch thread said it (for the data set)
      log(
        f"error: {how}; temporary files removed, no shards and no metadata.json left for the "
        f"data set being converted (log: {args.log_file})"
      )
    return getattr(e, "exit_code", 130)
  except Exception as e:
    try:
      with open(args.log_file, "a", encoding="utf-8") as f:
        f.write("".join(traceback.format_exception(e)))
    except OSError:
      pass  # /tmp full too: the one line below is still the answer.
    if args.verbose:
      traceback.print_exception(e, file=supervise.CapturedStderr.terminal or sys.stderr)
    log(f"error: {errors.root_cause(e)} (full trace: {args.log_file})")
    return 1
  finally:
    if not keep_log:
      os.remove(args.log_file)  # Its path was never printed: nothing to look at.
  return 0


def _convert_all(args, options, log):
  """Downloads if asked, then converts each data set that --dataset names."""
  names = specs.names() if args.dataset == "all" else (args.dataset,)
  if args.download:
    from preprocess import download

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


if __name__ == "__main__":
  # Before Beam is imported: its import logs a warning through the root logger
  # ("apitools not found"), which would otherwise install a stderr handler.
  logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING)
  logging.getLogger().handlers[0].addFilter(
    lambda record: not supervise.NOISE.search(record.getMessage())
  )
  logging.getLogger("apache_beam").setLevel(logging.WARNING)
  sys.exit(main())
