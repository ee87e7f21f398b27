"""The run directory (--model-dir): what a run holds, who may write it, and what it is checked against.

Sits between the flags (trainers/config.py, which reads a run's config.json
back through `read_config` before TensorFlow is imported) and the loop
(trainers/train.py, which claims the directory with `claim` before it builds
anything). A run directory is self-describing: its config.json is enough to
evaluate, export or resume it. One writer at a time: the chief holds the
directory's lock (preprocess/dirlock.py) for the whole run, whatever the mode,
since evaluation writes metrics.json and summaries too. Paths are used
literally: the directory is listed, never globbed, so a name with `[`, `*` or
`?` in it matches nothing else.

Every error here is a `RunError` with a one-line message. `--overwrite` is
advised only to a user who asked to train (it deletes the run).
"""

import importlib
import json
import os
import sys

from preprocess import dirlock
from preprocess import hashing
from trainers import quiet
from trainers import stops
from trainers import tags

CONFIG = "config.json"
METRICS = "metrics.json"
EXPORT = "export"
# Beside export/ while an export is written (PARTIAL) and while the new one is
# swapped in (SWAPPED); a run that finds them was interrupted, and cleans them.
PARTIAL = ".partial"
SWAPPED = ".old"
# What a run writes into its directory, and so what --overwrite deletes (with
# the HParams event files at the top level), each with its kind: an entry of
# the other kind is not the run's and stays. Anything else (notes, the lock) stays.
# ("eval" is the evaluation run of versions before trainers/tags.py.)
RUN_DIRS = ("checkpoints", "best", EXPORT, *tags.RUNS, "eval")
RUN_FILES = (CONFIG, METRICS)
RUN_ENTRIES = RUN_DIRS + RUN_FILES
# The run's own temporary names: written whole, then renamed into place.
TEMPORARY = (CONFIG + ".tmp", METRICS + ".tmp", EXPORT + PARTIAL, EXPORT + SWAPPED)
TRAIN_MODES = ("train", "train_and_eval")


class RunError(Exception):
  """A model dir that cannot hold or serve this run; the message is one line."""


def _gfile():
  """tf.io.gfile (literal paths, local or object stores); imported on first use, after the flags."""
  if "tensorflow" not in sys.modules:  # its start-up banners dropped, as trainers/entry.py does
    with quiet.quiet_imports():
      importlib.import_module("tensorflow")
  return sys.modules["tensorflow"].io.gfile


def config_path(model_dir):
  return os.path.join(model_dir, CONFIG)


def advice(mode):
  """What a user can do about the run a model dir holds; --overwrite only to one who trains."""
  if mode in TRAIN_MODES:
    return "pass another --model-dir, or --overwrite to delete that run and train anew"
  return "pass another --model-dir"


def _read_text(path):
  """The file's text, or None if it does not exist. Local paths need no TensorFlow."""
  if "://" in path:
    gfile = _gfile()
    if not gfile.exists(path):
      return None
    if gfile.isdir(path):
      raise IsADirectoryError(path)
    with gfile.GFile(path, "rb") as f:
      return f.read()
  if not os.path.lexists(path):
    return None
  with open(path, "rb") as f:
    return f.read()


def read_config(model_dir, training=True):
  """The JSON object of `<model_dir>/config.json`, or None if the directory holds no run.

  Args:
    model_dir: The run directory (used literally).
    training: Whether the user asked to train (for the advice of the message).

  Raises:
    RunError: The file is a directory, not JSON, or not a JSON object.
  """
  path = config_path(model_dir)
  try:
    raw = _read_text(path)
  except IsADirectoryError:
    raise RunError(
      f"{path} is a directory, not the run's config: {advice('train' if training else 'eval')}"
    ) from None
  except NotADirectoryError:
    return None  # the model dir is a file; `claim` says so
  except Exception as e:  # tf.errors.OpError: gs:// offline, a scheme TensorFlow lacks
    if "://" not in path or isinstance(e, OSError):
      raise
    raise unreachable(model_dir, e) from None
  if raw is None:
    return None
  try:
    data = json.loads(raw)
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    why = f"not valid JSON ({e})"
  else:
    if isinstance(data, dict):
      return data
    why = f"a JSON {type(data).__name__}, not an object"
  raise RunError(
    f"{path} is damaged ({why}): cannot tell what run {model_dir} holds; restore the file, or "
    + advice("train" if training else "eval")
  )


def unreachable(model_dir, error):
  """The one line of a model dir that tf.io.gfile cannot reach (gs:// offline, an unknown scheme)."""
  text = (getattr(error, "message", None) or str(error)).strip().splitlines()
  return RunError(
    f"--model-dir {model_dir}: cannot be reached ({text[0] if text else type(error).__name__}): "
    "check the path, the network and the credentials, or pass another --model-dir"
  )


def check_holds(model_dir, held_dataset, held_recipe, dataset, recipe, mode):
  """Refuses a run of another data set, or another --recipe than the one the run holds.

  Args:
    model_dir: The run directory.
    held_dataset, held_recipe: What its config.json says it is.
    dataset: The entry script's data set.
    recipe: The --recipe given on the command line, or None.
    mode: The --mode asked for.
  """
  if held_dataset != dataset:
    raise RunError(
      f"{model_dir} holds a {held_dataset} run ({held_dataset}/{held_recipe}), not a {dataset} "
      f"one: use trainers/{held_dataset}.py for it, or {advice(mode)}"
    )
  if recipe is not None and recipe != held_recipe:
    verb = "resume" if mode in TRAIN_MODES else {"eval": "evaluate"}.get(mode, mode)
    raise RunError(
      f"{model_dir} holds a {dataset}/{held_recipe} run, not {dataset}/{recipe}: leave out "
      f"--recipe to {verb} it, or {advice(mode)}"
    )


def _is_export(gfile, path):
  """Whether directory `path` is empty or holds a SavedModel (so a run may have written it)."""
  names = gfile.listdir(path)
  return not names or "saved_model.pb" in names


def clear(model_dir):
  """Deletes what a run wrote into `model_dir` (`RUN_ENTRIES`, top-level event files).

  Only entries of the kind a run writes: a file named `export`, a folder named
  `metrics.json` or an `export/` without a SavedModel is the user's and stays.
  """
  gfile = _gfile()
  for name in gfile.listdir(model_dir):
    name = name.rstrip("/")
    path = os.path.join(model_dir, name)
    is_dir = gfile.isdir(path)
    if is_dir:
      ours = name in TEMPORARY or (name in RUN_DIRS and (name != EXPORT or _is_export(gfile, path)))
      if ours:
        gfile.rmtree(path)
    elif name in RUN_FILES or name in TEMPORARY or name.startswith("events.out.tfevents."):
      gfile.remove(path)


# What each entry a run writes holds, for the start-up check's line.
_WHAT = {
  "checkpoints": "checkpoints",
  "best": "best checkpoint",
  EXPORT: "serving model",
  CONFIG: "config",
  METRICS: "final metrics",
}


def _writes(config):
  """{entry of the model dir that `config.mode` writes: True for a directory, False for a file}."""
  training = config.mode in TRAIN_MODES
  writes = {run: True for run in tags.RUNS}  # TensorBoard summaries
  writes.update({config.eval_split: True, "checkpoints": True})  # eval reads it: a file fails too
  if training:
    writes.update({"best": True, CONFIG: False})
  if config.mode in ("eval", "train_and_eval"):
    writes[METRICS] = False
  if config.mode == "export" or (training and config.export):
    writes[EXPORT] = True
  return writes


def check_paths(config):
  """Refuses, before any work, a model dir where an entry the run will write is of the wrong kind.

  A file named `checkpoints`, a folder named `metrics.json`, an `export/` that
  holds no SavedModel (not the run's), a folder that cannot be written: each
  would fail late (at the first checkpoint, after the whole training) or lose
  the user's file. Local folders are checked for write permission too.

  Raises:
    RunError: The first such entry, named with its problem.
  """
  d, gfile = config.model_dir, _gfile()
  fix = "move it away, or pass another --model-dir"
  local = "://" not in d
  if local and not os.access(d, os.W_OK | os.X_OK):
    raise RunError(f"--model-dir {d} is not writable: the run writes its files there")
  for name, is_dir in sorted(_writes(config).items()):
    what = _WHAT.get(name, "TensorBoard summaries")
    # A file is written as <name>.tmp, then renamed.
    for path in [os.path.join(d, name)] + ([] if is_dir else [os.path.join(d, name + ".tmp")]):
      if not gfile.exists(path):
        continue
      if gfile.isdir(path) != is_dir:
        kind = "a file, not a directory" if is_dir else "a directory, not a file"
        raise RunError(f"{path} is {kind}: the run writes its {what} there; {fix}")
      if local and is_dir and not os.access(path, os.W_OK | os.X_OK):
        raise RunError(f"{path} is not writable: the run writes its {what} there; {fix}")
      if name == EXPORT and not _is_export(gfile, path):
        raise RunError(
          f"{path} holds no saved_model.pb, so it is not an export of this run: the run writes "
          f"its {what} there; {fix}"
        )


def clean_interrupted(model_dir, log):
  """Removes what an interrupted run left half-written (its temporary names), each with a line.

  An export swapped out (`export.old`) but not replaced comes back as `export/`.
  """
  gfile = _gfile()
  export, swapped = os.path.join(model_dir, EXPORT), os.path.join(model_dir, EXPORT + SWAPPED)
  if gfile.isdir(swapped) and not gfile.exists(export):
    gfile.rename(swapped, export)
    log(f"{export}: put back the export an interrupted export had moved to {swapped}")
  for name in TEMPORARY:
    path = os.path.join(model_dir, name)
    if not gfile.exists(path) or os.path.islink(path):  # a link is not the run's
      continue
    if gfile.isdir(path):
      gfile.rmtree(path)
    else:
      gfile.remove(path)
    log(f"{path}: removed, left half-written by an interrupted run")


def claim(config, owner, log):
  """The chief's claim on the model dir: checked, created, locked, cleared with --overwrite.

  Args:
    config: The run's `config.Config`.
    owner: What holds the lock, shown to a second writer.
    log: Called with a line when a dead holder's lock is taken over.

  Returns:
    (the held `dirlock.Lock`, the run's config.json as a dict or None for a new run).

  Raises:
    RunError: The path is a file, cannot be created, holds no run to evaluate
      or export, its config.json is damaged, another live process holds it, or
      an entry the run writes is of the wrong kind (`check_paths`).
  """
  d, gfile = config.model_dir, _gfile()
  training = config.mode in TRAIN_MODES
  if os.path.islink(d) and not os.path.exists(d):
    raise RunError(
      f"--model-dir {d} is a symlink to {os.readlink(d)}, which does not exist: create that "
      "directory, or pass another --model-dir"
    )
  try:
    exists = gfile.exists(d)
  except Exception as e:  # tf.errors.OpError
    raise unreachable(d, e) from None
  if exists and not gfile.isdir(d):
    raise RunError(f"--model-dir {d} is a file, not a directory: pass a directory")
  if not training and not exists:
    raise RunError(f"--model-dir {d} does not exist: there is no run to {config.mode}; train first")
  try:
    gfile.makedirs(d)
  except Exception as e:  # tf.errors.OpError or OSError: a file on the path, a read-only parent
    text = (getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)).splitlines()
    raise RunError(f"--model-dir {d} cannot be created: {text[0] if text else e}") from None
  try:
    lock = dirlock.acquire(d, owner, log=log)
  except dirlock.LockHeld as e:
    raise RunError(str(e)) from None
  except OSError as e:
    raise RunError(f"--model-dir {d}: cannot take its lock ({e.strerror or e})") from None
  try:
    check_paths(config)
    if config.overwrite:
      clear(d)
      return lock, None
    clean_interrupted(d, log)
    return lock, read_config(d, training)
  except BaseException:
    lock.release()
    raise


def write_json(path, data):
  """Writes `data` as JSON to `path` atomically (a reader never sees half a file).

  A stop signal waits for the end of the write; on an error the temporary file goes.
  """
  gfile = _gfile()
  tmp = path + ".tmp"
  with stops.deferred():
    try:
      with gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
      gfile.rename(tmp, path, overwrite=True)
    except BaseException:
      if gfile.exists(tmp) and not gfile.isdir(tmp):
        gfile.remove(tmp)
      raise


# --- the run against its data, at start-up ------------------------------------


def data_signature(metadata, data_dir=None):
  """What a model is tied to in its data, recorded in config.json as "data".

  The image shape and classes (what the model's shapes and export follow), the
  split sizes and, with `data_dir`, the sha256 of its metadata.json: the
  data's identity, which lists every shard's sha256, so data converted again
  with other splits or inputs has another one. The same bytes copied
  elsewhere keep it.
  """
  signature = {
    "image_shape": list(metadata.image_shape),
    "num_classes": metadata.num_classes,
    "class_names": list(metadata.class_names),
    "splits": {name: split.num_examples for name, split in metadata.splits.items()},
  }
  if data_dir is not None:
    signature["metadata_sha256"] = hashing.sha256_file(
      os.path.join(data_dir, "metadata.json"), opener=lambda path: _gfile().GFile(path, "rb")
    )
  return signature


def metadata_from_config(saved, dataset):
  """The data a run's config.json records, as a `Metadata` without shards, or None if incomplete.

  What --mode export needs of the data: image shape, classes, the train split's
  size (the schedule's epoch) and the augmentation the run applied; so an
  export needs no data dir. config.json files written before the split sizes
  were recorded give None (the data dir is read instead).
  """
  from preprocess import augment
  from preprocess import metadata as metadata_lib

  data, recipe = (saved or {}).get("data"), (saved or {}).get("recipe")
  if not isinstance(data, dict) or not isinstance(recipe, dict):
    return None
  splits, policy = data.get("splits"), recipe.get("augmentation")
  if not isinstance(splits, dict) or "train" not in splits or not isinstance(policy, dict):
    return None
  try:
    metadata = metadata_lib.Metadata(
      dataset=dataset,
      class_names=data["class_names"],
      num_classes=data["num_classes"],
      image_shape=data["image_shape"],
      image_format=metadata_lib.IMAGE_FORMATS[0],
      feature_spec={},
      splits={name: metadata_lib.SplitInfo(n, []) for name, n in splits.items()},
      augmentation=policy,
    )
    augment.output_shape(policy["train"], metadata.image_shape)  # a policy this checkout reads
    if len(metadata.class_names) != metadata.num_classes:
      return None
  except (KeyError, TypeError, ValueError):
    return None
  return metadata


def _data_change(recorded, now):
  """'split sizes train 9,000 -> 8,500' or 'its metadata.json differs', or None if the same data."""
  if "metadata_sha256" not in recorded or recorded["metadata_sha256"] == now["metadata_sha256"]:
    return None
  before, after = recorded.get("splits") or {}, now["splits"]
  changed = [
    f"{name} {before.get(name, 0):,} -> {after.get(name, 0):,}"
    for name in sorted(set(before) | set(after))
    if before.get(name) != after.get(name)
  ]
  if changed:
    return "split sizes " + ", ".join(changed)
  return (
    f"same split sizes, but its metadata.json differs (sha256 {recorded['metadata_sha256'][:12]}... "
    f"-> {now['metadata_sha256'][:12]}...)"
  )


def _shape(shape):
  return "x".join(str(n) for n in shape)


def check_data(config, metadata, previous):
  """Mismatches between the run and its data, found before any work; each one line.

  Checks the data set (metadata.json names it), the image shape the recipe is
  written for, the splits the run evaluates, and, for a run that exists, the
  image shape and classes it was trained on (its config.json "data"), and
  whether it is the same data (metadata.json's sha256): resuming on other data
  is refused unless --accept-new-data; evaluating on it is said.

  Returns:
    A line to log about the data (other data accepted or evaluated), or None.

  Raises:
    RunError: The first mismatch found.
  """
  recipe, data_dir = config.recipe, config.data_dir
  meta = os.path.join(data_dir, "metadata.json")
  if metadata.dataset != config.dataset:
    raise RunError(
      f"{data_dir} holds {metadata.dataset} data (its metadata.json), but "
      f"trainers/{config.dataset}.py "
      f"trains {config.dataset} models: use trainers/{metadata.dataset}.py, or pass the "
      f"--data-dir of {config.dataset} data"
    )
  wanted = recipe.image_shape
  if wanted and list(wanted) != list(metadata.image_shape):
    raise RunError(
      f"{meta}: recipe {recipe.name} is written for {_shape(wanted)} images, but {data_dir} "
      f"holds {_shape(metadata.image_shape)} images: convert the data at that size, or use "
      "another --recipe"
    )
  order = {"train": 0, "validation": 1, "test": 2}
  splits = ", ".join(sorted(metadata.splits, key=lambda name: (order.get(name, 3), name)))
  if config.mode in ("eval", "train_and_eval") and config.eval_split not in metadata.splits:
    raise RunError(
      f"--eval-split {config.eval_split}: {data_dir} has no such split (its metadata.json "
      f"lists {splits})"
    )
  if config.mode in TRAIN_MODES and recipe.eval_every and recipe.eval_on not in metadata.splits:
    hint = (
      f"rerun the Beam job with --validation-size {recipe.validation_size or 'N'}"
      if recipe.eval_on == "validation"
      else f"use data with a {recipe.eval_on} split"
    )
    raise RunError(
      f"recipe {recipe.name} evaluates on the {recipe.eval_on} split during training, but "
      f"{data_dir} has none (it has {splits}): {hint}, or pass --eval-every 0"
      + (" --early-stopping-patience 0" if recipe.early_stopping_patience else "")
    )
  recorded = (previous or {}).get("data")
  if not isinstance(recorded, dict):
    return None  # a new run, or a config.json written before the data were recorded
  now = data_signature(metadata, data_dir)
  for key, what in (
    ("image_shape", "images of shape"),
    ("num_classes", "classes:"),
    ("class_names", "class names"),
  ):
    if key in recorded and recorded[key] != now[key]:
      raise RunError(
        f"{config_path(config.model_dir)}: the run in {config.model_dir} was trained on {what} "
        f"{recorded[key]}, but {data_dir} has {now[key]}: use the data it was trained on "
        f"(--data-dir), or {advice(config.mode)}"
      )
  change = _data_change(recorded, now)
  if change is None:
    return None
  where = (
    f"the run in {config.model_dir} was trained on other data than {data_dir} holds ({change})"
  )
  if config.mode not in TRAIN_MODES:
    return f"note: {where}; {config.mode} uses {data_dir}"
  if not config.accept_new_data:
    raise RunError(
      f"{config_path(config.model_dir)}: {where}: pass the --data-dir it was trained on, "
      f"--accept-new-data to resume on this data, or {advice(config.mode)}"
    )
  return f"resuming on other data (--accept-new-data): {where}"
