"""The trainer's view of the Beam job's output, checked before any step.

Sits between metadata.json and shards (written by pipeline/build_tfrecords.py,
read through preprocess/schema.py's one reader) and the input chain
(trainers/input_pipeline.py): `load_metadata` checks that every shard listed
exists and holds the records it claims, `check_first_records` decodes the first
record of each shard against the image shape and classes of metadata.json,
and `find_damaged_shard` names the shard behind a read error. Every failure is
an `InputError` of one line naming the file.
"""

import hashlib

import tensorflow as tf

from preprocess import schema

METADATA = schema.METADATA_FILE


class InputError(ValueError):
  """Data that disagrees with metadata.json or with the model; the message is one line."""


def join(*parts):
  return tf.io.gfile.join(*[str(p) for p in parts])


def count_records(path):
  """Counts the records of a TFRecord file from its framing (preprocess/schema.py).

  Args:
    path: File path (local or any tf.io.gfile scheme, e.g. gs://).

  Returns:
    The number of records.

  Raises:
    InputError: The file ends inside a record (truncated write or copy).
  """
  size = tf.io.gfile.stat(path).length
  with tf.io.gfile.GFile(path, "rb") as f:
    try:
      return schema.count_records(f, size, path)
    except schema.TFRecordError as e:
      raise InputError(str(e)) from None


def load_metadata(data_dir, check_records=True, dataset=None):
  """Reads `<data_dir>/metadata.json` and checks the shards against it.

  Args:
    data_dir: Output directory of the Beam job for one data set (local or gs://).
    check_records: Also count each shard's records (reads 8 bytes a record; on
      remote storage that still streams the shards once, so very large data
      sets may skip it once they have been checked).
    dataset: The data set the caller trains, to name its folder when
      `data_dir` is the folder above it.

  Returns:
    The `preprocess.schema.Metadata` written by pipeline/build_tfrecords.py.

  Raises:
    InputError: metadata.json is missing or malformed, a shard is missing, or its
      record count, size or first bytes disagree (`_differs`). The message names
      the file and what disagrees.
  """

  def open_any(path, mode):  # Local or any tf.io.gfile scheme; a missing file as open() says it.
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(path)
    return tf.io.gfile.GFile(path, mode)

  try:
    metadata = schema.read_metadata(data_dir, opener=open_any)  # The one reader of the contract.
  except schema.MetadataError as e:
    raise InputError(_one_level_down(data_dir, dataset) or str(e)) from None
  for split, entry in metadata.splits.items():
    for shard in entry.shards:
      shard_path = join(data_dir, shard.file)
      if not tf.io.gfile.exists(shard_path):
        raise InputError(f"{shard_path}: listed in {METADATA} (split {split!r}) but missing")
      if check_records:
        found = count_records(shard_path)  # first: its framing tells a truncated copy apart
        if found != shard.num_examples:
          raise InputError(
            f"{shard_path}: holds {found} records, but {METADATA} says {shard.num_examples}"
          )
        differs = _differs(shard_path, shard, split)
        if differs:
          raise InputError(
            f"{shard_path} (split {split!r}): {differs}: a foreign, swapped or modified shard; "
            f"check every shard with {verify_command(data_dir, metadata.dataset)}"
          )
  return metadata


def verify_command(data_dir, dataset):
  """The command that checks every byte of the data (the full sha256 the trainers skip)."""
  out_dir = data_dir.rstrip("/").rsplit("/", 1)[0] if "/" in data_dir.rstrip("/") else "."
  return f"python -m pipeline.build_tfrecords --verify-data --dataset {dataset} --out-dir {out_dir}"


def _differs(path, shard, split):
  """What of a shard disagrees with its metadata.json entry, cheaply, or None.

  Its size (a stat) and the sha256 of its first `schema.HEAD_BYTES` bytes (the
  record count is checked before); not the sha256 of every byte, nor the CRCs
  (docs/data.md says why and what that costs).

  Raises:
    InputError: The first bytes differ because a record there is damaged: the
      line names the record and its offset (framing and CRCs of this shard).
  """
  size = tf.io.gfile.stat(path).length
  if shard.num_bytes is not None and size != shard.num_bytes:
    return f"{size:,} bytes, but {METADATA} says {shard.num_bytes:,}"
  if shard.head_sha256 is not None:
    with tf.io.gfile.GFile(path, "rb") as f:
      head = hashlib.sha256(f.read(schema.HEAD_BYTES)).hexdigest()
    if head != shard.head_sha256:
      damaged = _damaged(path, split)  # bytes changed in place: name the record and offset
      if damaged:
        raise InputError(damaged)
      return (
        f"the sha256 of its first {min(size, schema.HEAD_BYTES):,} bytes is {head[:12]}..., "
        f"but {METADATA} says {shard.head_sha256[:12]}..."
      )
  return None


def _one_level_down(data_dir, dataset=None):
  """'X/metadata.json: not found, but X/mnist has one: pass --data-dir X/mnist', when so."""
  try:
    below = [
      name.rstrip("/")
      for name in sorted(tf.io.gfile.listdir(data_dir))
      if tf.io.gfile.exists(join(data_dir, name.rstrip("/"), METADATA))
    ]
  except (tf.errors.OpError, OSError):
    return None
  if not below:
    return None
  pick = dataset if dataset in below else below[0]
  which = (
    f"{join(data_dir, pick)} has one"
    if len(below) == 1
    else f"its subfolders {', '.join(below)} have one each"
  )
  return (
    f"{join(data_dir, METADATA)}: not found, but {which}: pass --data-dir {join(data_dir, pick)}"
  )


def find_damaged_shard(data_dir, metadata, splits):
  """'<shard>: corrupted ... at byte N' for the first damaged shard of `splits`, or None."""
  for split in splits:
    if split not in metadata.splits:
      continue
    for shard in metadata.splits[split].shards:
      damaged = _damaged(join(data_dir, shard.file), split)
      if damaged:
        return damaged
  return None


def _damaged(path, split):
  """'<shard>: corrupted record N at byte B ... the shard is damaged', or None (framing and CRCs)."""
  try:
    found = schema.find_corruption(path, opener=tf.io.gfile.GFile)
  except (OSError, tf.errors.OpError) as e:
    return f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})"
  if found:
    return (
      f"{found.describe(path)} (split {split!r}): the shard is damaged; "
      "convert the data again (make preprocess)"
    )
  return None


def check_first_records(data_dir, metadata):
  """Checks the first record of each shard against metadata.json, before any step.

  Catches metadata edited after the Beam job (another image size, channel
  count or class list) and foreign shards with the same record count.

  Raises:
    InputError: One line naming the shard and what disagrees.
  """
  height, width, channels = metadata.image_shape
  if len(metadata.class_names) != metadata.num_classes:
    raise InputError(
      f"{join(data_dir, METADATA)}: num_classes is {metadata.num_classes} but "
      f"class_names lists {len(metadata.class_names)}"
    )
  for split, entry in metadata.splits.items():
    if entry.label_counts is not None and len(entry.label_counts) != metadata.num_classes:
      raise InputError(
        f"{join(data_dir, METADATA)}: num_classes is {metadata.num_classes} but "
        f"split {split!r} counts records of {len(entry.label_counts)} labels"
      )
    for shard in entry.shards:
      if not shard.num_examples:
        continue
      path = join(data_dir, shard.file)
      try:
        serialized = next(iter(tf.data.TFRecordDataset(path).take(1))).numpy()
        features = {k: v.numpy() for k, v in schema.parse_example(serialized).items()}
        image = tf.io.decode_image(features[schema.ENCODED], expand_animations=False).numpy()
      except (tf.errors.OpError, StopIteration) as e:
        message = getattr(e, "message", None) or type(e).__name__
        raise InputError(
          f"{path}: its first record cannot be read as an image Example ({message.splitlines()[0]})"
        ) from None
      found = tuple(image.shape)
      stored = (
        int(features[schema.HEIGHT]),
        int(features[schema.WIDTH]),
        int(features[schema.CHANNELS]),
      )
      if found != (height, width, channels) or stored != found:
        raise InputError(
          f"{path}: its first record is a {format_shape(found)} image but "
          f"{METADATA} says {format_shape((height, width, channels))}"
        )
      label = int(features[schema.LABEL])
      text = features[schema.TEXT].decode("utf-8", "replace")
      if not 0 <= label < metadata.num_classes:
        raise InputError(
          f"{path}: its first record has label {label} ({text!r}), outside the "
          f"{metadata.num_classes} classes of {METADATA}"
        )
      if metadata.class_names[label] != text:
        raise InputError(
          f"{path}: its first record has label {label} = {text!r}, but "
          f"{METADATA} names class {label} {metadata.class_names[label]!r}"
        )


def format_shape(shape):
  return "x".join("?" if d is None else str(d) for d in shape)
