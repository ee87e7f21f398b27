"""The Beam job's output folder, OUT/<dataset>/: what is ours in it, and how it is replaced.

The job (pipeline/build_tfrecords.py) holds the folder's lock
(preprocess/dirlock.py) while it writes, clears its own earlier output
(`prepare`), leaves per-task sidecars in a hidden work folder
(`read_sidecars`, `remove_work_files`) and writes the ledgers and, last,
metadata.json (`write_atomically`). Only the job's own file names are patterns
here; the folder a user names is matched literally (`match`), so an output
folder called `a[1]` never touches the files of `a1`.

Files in the folder that are not ours (the `.lock` file, a user's notes) are
never listed, counted or deleted.
"""

import glob
import json
import os
import shutil
import warnings

from apache_beam.io.filesystems import FileSystems

from pipeline.options import UsageError
from preprocess import atomic
from preprocess import schema

METADATA = schema.METADATA_FILE
REJECTS = schema.REJECTS_FILE
SKIPPED = schema.SKIPPED_FILE
# Everything a run of the job leaves in its folder, as patterns of its own names.
OURS = (METADATA, REJECTS, SKIPPED, "*.tfrecord", ".*.tmp-*", ".work-*/**")
# A task's sidecar (its shard's stats and rejects) is <shard file name> + this.
SIDECAR_SUFFIX = ".stats.json"
WORK_PREFIX = ".work-"


class ExistingOutputError(UsageError):
  """The folder holds an earlier output and --overwrite was not given; one line."""


def match(directory, *patterns):
  """Paths below `directory` (taken literally) matching our own `patterns`.

  Args:
    directory: A local folder or a FileSystems URL, used as a path, never as
      a pattern: `[`, `]`, `*` and `?` in it are escaped.
    *patterns: Patterns of our own file names relative to it (Beam's syntax:
      `*` stays within a folder, `**` crosses folders).

  Returns:
    The matching paths, sorted.
  """
  # glob.escape's brackets ("[[]", "[*]") are also escapes in Beam's pattern
  # syntax, which is fnmatch's; Python's re warns that "[[]" could be a nested
  # set in some future version, which it is not here.
  escaped = glob.escape(directory)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    results = FileSystems.match([FileSystems.join(escaped, p) for p in patterns])
  return sorted({m.path for result in results for m in result.metadata_list})


def ours(out_dir):
  """Everything of ours in `out_dir`: the files `OURS` matches, and the local work folders.

  Beam's match lists files only, so the work folder of a run killed with -9
  (empty once its sidecars are gone) is found by listing the folder.
  """
  found = match(out_dir, *OURS)
  if "://" not in out_dir and os.path.isdir(out_dir):
    found += [
      os.path.join(out_dir, name)
      for name in sorted(os.listdir(out_dir))
      if name.startswith(WORK_PREFIX) and os.path.isdir(os.path.join(out_dir, name))
    ]
  return found


def delete(paths):
  """Deletes files and folders (recursively) at exactly these paths.

  Beam's local `FileSystems.delete` matches each path as a pattern (a file
  named `a[1]` is not found, and `a*` deletes `abc`); local paths are deleted
  here directly.
  """
  local = [p for p in paths if "://" not in p]
  for path in local:
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif os.path.lexists(path):
      os.remove(path)
  remote = [p for p in paths if "://" in p]
  if remote:
    FileSystems.delete(remote)


def prepare(out_dir, overwrite, log):
  """Makes `out_dir` ready for a new run; refuses to clobber an output without `overwrite`.

  An output without metadata.json is the remains of a run that never
  finished (killed with -9, or one that failed its checks): nothing trusts it,
  so it is replaced without --overwrite, with a line saying so.

  Raises:
    ExistingOutputError: It holds a complete output and `overwrite` is False.
  """
  existing = ours(out_dir)
  metadata = FileSystems.join(out_dir, METADATA)
  if existing and not overwrite:
    if metadata in existing:
      raise ExistingOutputError(
        f"{out_dir}: output already exists ({len(existing)} files); pass --overwrite to replace it"
      )
    log(
      f"{out_dir}: replacing the incomplete output of an earlier run ({len(existing)} files, "
      "no metadata.json: it never finished)"
    )
  # metadata.json goes first, so an interrupted overwrite never looks complete.
  if metadata in existing:
    delete([metadata])
  rest = [p for p in existing if p != metadata]
  if rest:
    delete(rest)
  if "://" not in out_dir:
    os.makedirs(out_dir, exist_ok=True)


def sidecar_path(stats_dir, shard_filename):
  """Where the task of `shard_filename` leaves its stats and rejects (pipeline/convert.py)."""
  return FileSystems.join(stats_dir, shard_filename + SIDECAR_SUFFIX)


def remove_incomplete(out_dir):
  """Deletes a run's output that has no metadata.json (an interrupted or failed run's shards)."""
  existing = ours(out_dir)
  if existing and FileSystems.join(out_dir, METADATA) not in existing:
    delete(existing)


def read_sidecars(work, tasks):
  """Stats and rejects of the planned shards, from the sidecars their tasks wrote.

  Reads exactly one sidecar per task in `tasks`, whatever else `work` holds;
  a shard without one is left out, and the ledger check names it.

  Returns:
    (list of stats dicts, list of reject dicts), in task order.
  """
  found = set(match(work, "*"))
  stats, rejects = [], []
  for task in tasks:
    path = sidecar_path(work, task.filename)
    if path in found:
      with FileSystems.open(path) as f:
        sidecar = json.loads(f.read().decode("utf-8"))
      stats.append(sidecar["stats"])
      rejects += sidecar["rejects"]
  return stats, rejects


def remove_work_files(out_dir, work):
  """Deletes the sidecars and the temporary files of failed or retried tasks."""
  files = match(work, "*") + match(out_dir, ".*.tmp-*")
  if files:
    delete(files)
  if FileSystems.exists(work):  # The local directory itself.
    delete([work])


def write_atomically(path, text):
  """Writes a file of the output under its final name only when complete, on any FileSystem."""
  atomic.write_text(path, text, filesystem=FileSystems)


def write_ledger(path, entries):
  """Writes one JSON line per entry (sorted keys), atomically."""
  write_atomically(path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
