"""The Beam transforms of the conversion: one shard task in, one TFRecord shard out.

`ConvertShards` reads each task's record ranges with the plain readers in
`preprocess/`, validates and encodes every record (`preprocess.schema`), and
writes the shard in one pass. Records that fail validation go to the tagged
`rejects` output with the reason; the main output is one small stats dict per
shard, from which the driver checks that nothing was lost.

Why whole shards per element instead of a PCollection of records followed by a
sharded write: a sharded write groups records by shard, and a GroupByKey on the
direct runner holds every record of the data set in memory at once (1.5 GB for
60,000 CIFAR images, and growing with the data). With shards as elements, memory
stays flat, the work still spreads over every worker, and the output does not
depend on how a runner bundles or orders elements.
"""

import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import plan
from preprocess import schema
from preprocess.schema import Reject

REJECTS = "rejects"
STATS = "stats"


class ConvertShardFn(beam.DoFn):
  """Converts one `plan.ShardTask` into its TFRecord shard.

  Emits a stats dict (main output) and one dict per rejected record (`rejects`).
  The shard is written under a temporary name and renamed when complete, so a
  retried or failed bundle never leaves a truncated file under a shard name.
  """

  def __init__(self, out_dir, class_names, image_format, image_size):
    super().__init__()
    self._out_dir = out_dir
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
    read = written = 0
    label_counts = [0] * len(self._class_names)
    with FileSystems.create(temp, compression_type=CompressionTypes.UNCOMPRESSED) as out:
      for source, start, stop in task.ranges:
        for item in plan.read_source(source, start, stop, self._image_size):
          read += 1
          if isinstance(item, Reject):
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTS, dict(item.to_json_dict(), split=task.split))
            continue
          example = schema.make_example(item, self._class_names, self._image_format)
          out.write(schema.frame(example))
          written += 1
          label_counts[item.label] += 1
    if read != task.count:
      raise RuntimeError(f"{task.filename}: planned {task.count} records but read {read}")
    FileSystems.rename([temp], [final])
    self._read.inc(read)
    self._written.inc(written)
    self._shards.inc()
    yield {"split": task.split, "index": task.index, "file": task.filename, "read": read,
           "written": written, "rejected": read - written, "label_counts": label_counts}


class ConvertShards(beam.PTransform):
  """ShardTasks -> stats per shard (main output) and rejected records (`rejects`)."""

  def __init__(self, out_dir, class_names, image_format, image_size):
    super().__init__()
    self._fn = ConvertShardFn(out_dir, class_names, image_format, image_size)

  def expand(self, tasks):
    return tasks | beam.ParDo(self._fn).with_outputs(REJECTS, main=STATS)
