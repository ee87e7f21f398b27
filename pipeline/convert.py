"""The Beam transforms of the conversion: one shard task in, one TFRecord shard out.

`ConvertShards` reads each task's record ranges with the plain readers in
`preprocess/`, validates and encodes every record (`preprocess.schema`), and
writes the shard in one pass. Next to the shards, in the run's work directory,
each task then writes a small JSON sidecar: the shard's stats and the records
it rejected, with the reason. The driver reads the sidecars of the tasks it
planned and checks that nothing was lost. Files written by the task itself
come back the same way on every runner; results that travel through a sink
depend on the runner finalizing that sink (the Dask runner loses them).

Why whole shards per element instead of a PCollection of records followed by a
sharded write: a sharded write groups records by shard, and a GroupByKey on the
direct runner holds every record of the data set in memory at once (1.5 GB for
60,000 CIFAR images, and growing with the data). With shards as elements, memory
stays flat, the work still spreads over every worker, and the output does not
depend on how a runner bundles or orders elements.
"""

import contextlib
import hashlib
import json
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import outdir
from pipeline import plan
from preprocess import atomic
from preprocess import datasets
from preprocess import errors
from preprocess import schema
from preprocess.schema import Reject


class ConvertShardFn(beam.DoFn):
  """Converts one `plan.ShardTask` into its TFRecord shard and its sidecar.

  The shard is written under a temporary name and renamed when complete, so a
  retried or failed bundle never leaves a truncated file under a shard name.
  Then the sidecar (`outdir.sidecar_path`) is written the same way: a sidecar exists
  only for a complete shard, and a retried task writes the same bytes again.
  The stats dict is also the main output, for pipelines that want it; the
  job itself reads only the sidecars.
  """

  def __init__(self, out_dir, class_names, image_format, image_size, stats_dir):
    super().__init__()
    self._out_dir = out_dir
    self._stats_dir = stats_dir
    self._class_names = list(class_names)
    self._image_format = image_format
    self._image_size = image_size

  def setup(self):
    self._read = Metrics.counter("convert", "records_read")
    self._written = Metrics.counter("convert", "records_written")
    self._rejected = Metrics.counter("convert", "records_rejected")
    self._shards = Metrics.counter("convert", "shards_written")

  def process(self, task):
    final = FileSystems.join(self._out_dir, task.filename)
    temp = FileSystems.join(self._out_dir, f".{task.filename}.tmp-{uuid.uuid4().hex}")
    try:
      stats, rejects = self._convert(task, temp, final)
    except BaseException:
      # A failed or killed task leaves no temporary shard behind (the driver
      # also sweeps `.*.tmp-*` when the run fails, for workers that died).
      try:
        if FileSystems.exists(temp):
          outdir.delete([temp])
      except Exception:
        pass  # The original error is the one to report.
      raise
    self._read.inc(stats["read"])
    self._written.inc(stats["written"])
    self._rejected.inc(len(rejects))
    self._shards.inc()
    yield stats

  def _convert(self, task, temp, final):
    read = written = num_bytes = 0
    digest, head = hashlib.sha256(), hashlib.sha256()
    label_counts = [0] * len(self._class_names)
    rejects = []
    with _writing(final, f"cannot write shard {task.filename}"):
      out = FileSystems.create(temp, compression_type=CompressionTypes.UNCOMPRESSED)
    with out:
      for source, start, stop in task.ranges:
        with _reading(source.paths[0]):
          items = list(_read(source, start, stop, self._image_size))
        for item in items:
          read += 1
          if isinstance(item, Reject):
            rejects.append(dict(item.to_json_dict(), split=task.split))
            continue
          framed = schema.frame(schema.make_example(item, self._class_names, self._image_format))
          with _writing(final, f"cannot write shard {task.filename}"):
            out.write(framed)
          digest.update(framed)
          head.update(framed[: max(0, schema.HEAD_BYTES - num_bytes)])
          num_bytes += len(framed)
          written += 1
          label_counts[item.label] += 1
      with _writing(final, f"cannot write shard {task.filename}"):
        out.close()
    if read != task.count:
      raise ShardFailure(final, f"planned {task.count} records but read {read}")
    with _writing(final, f"cannot rename the finished shard {task.filename} into place"):
      FileSystems.rename([temp], [final])
    stats = {
      "split": task.split,
      "index": task.index,
      "file": task.filename,
      "read": read,
      "written": written,
      "rejected": read - written,
      "label_counts": label_counts,
      "sha256": digest.hexdigest(),
      "num_bytes": num_bytes,
      "head_sha256": head.hexdigest(),
    }
    sidecar = {"stats": stats, "rejects": rejects}
    path = outdir.sidecar_path(self._stats_dir, task.filename)
    with _writing(path, "cannot write the shard's stats"):
      atomic.write_text(path, json.dumps(sidecar, sort_keys=True) + "\n", filesystem=FileSystems)
    return stats, rejects


class ShardFailure(RuntimeError):
  """A task that could not read its input or write its output.

  The message is one line, `<file>: <problem>`; the driver finds it by the class
  name in the worker traceback Beam hands back (build_tfrecords.root_cause).
  """

  def __init__(self, path, problem):
    super().__init__(f"{path}: {' '.join(str(problem).split())}")


def _read(source, start, stop, image_size):
  """The `Record`s and `Reject`s of `source` records [start, stop), from its layout's reader.

  The layout that owns the source's format (preprocess/datasets/) reads it
  (a layout's `read` uses only the `Source`), through the storage the plan uses.
  """
  for name in datasets.names():
    layout = datasets.get(name).layout
    if layout.format == source.kind:
      return layout.read(source, start, stop, image_size, plan.open_raw)
  raise ValueError(f"unknown source kind {source.kind!r}")


@contextlib.contextmanager
def _reading(path):
  try:
    yield
  except OSError as e:
    raise ShardFailure(path, f"cannot read: {errors.reason(e)}") from e


@contextlib.contextmanager
def _writing(path, what):
  try:
    yield
  except OSError as e:
    raise ShardFailure(path, f"{what}: {errors.reason(e)}") from e


class ConvertShards(beam.PTransform):
  """ShardTasks -> a shard and a sidecar each; outputs the stats dict of each shard.

  Args:
    out_dir: Directory of the shards.
    class_names: Label index -> class name.
    image_format: Encoding of the images in the shards.
    image_size: Side of the square output of resized data sets.
    stats_dir: Directory of the sidecars (see `outdir.sidecar_path`); the driver
      makes it per run and deletes it after reading.
  """

  def __init__(self, out_dir, class_names, image_format, image_size, *, stats_dir):
    super().__init__()
    self._fn = ConvertShardFn(out_dir, class_names, image_format, image_size, stats_dir)

  def expand(self, tasks):
    return tasks | beam.ParDo(self._fn)
