"""Benchmark workers run by bench/speed.py in their own processes (one TF runtime each).

  python -m bench.workers fit --recipe R --batch B --steps N      plain keras model.fit
  python -m bench.workers synthetic --recipe R --batch B --steps N [--precision P] [--xla]
      the trainer's own step loop (steps.make_train_loop) on one repeated batch, like
      Horovod's synthetic benchmark; runs under horovodrun too
  python -m bench.workers input --data-dir D --recipe R --batch B --steps N [--no-cache]
  python -m bench.workers flops --recipe R
  python -m bench.workers devices      TensorFlow's GPUs, its CUDA build, Horovod's NCCL
  python -m bench.workers allreduce --length L
      under horovodrun: a Sum allreduce of a known tensor, checked bitwise on
      every rank (bench/gpu_check.py)
Each prints one JSON line. With BENCH_PIN_LOCAL_RANK=1 a worker first pins itself to
the core numbered by its Horovod local rank (one core per worker).
"""

import argparse
import json
import os
import sys
import time


def _pin():
  if os.environ.get("BENCH_PIN_LOCAL_RANK"):
    rank = int(
      os.environ.get("HOROVOD_LOCAL_RANK", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", 0))
    )
    os.sched_setaffinity(0, {rank % os.cpu_count()})


def _model(recipe_name, precision="float32"):
  import keras

  from trainers import recipes

  recipe = recipes.get(recipe_name)
  keras.mixed_precision.set_global_policy(precision)
  # CIFAR-10's default train policy (both benchmarked recipes use it) crops to 24x24.
  shape = (24, 24, 3)
  return recipe, recipe.build_model(10, shape), shape


def fit(a):
  import keras
  import numpy as np

  recipe, model, shape = _model(a.recipe)
  model.compile(
    keras.optimizers.SGD(recipe.learning_rate),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
  )
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (a.batch * a.steps,) + tuple(shape)).astype("float32")
  y = rng.integers(0, 10, a.batch * a.steps).astype("int32")
  model.fit(x[: a.batch * 5], y[: a.batch * 5], batch_size=a.batch, epochs=1, verbose=0)  # trace
  start = time.perf_counter()
  model.fit(x, y, batch_size=a.batch, epochs=1, verbose=0)
  return {"img_per_s": a.batch * a.steps / (time.perf_counter() - start)}


def synthetic(a):
  import keras
  import tensorflow as tf

  from trainers import distributed
  from trainers import schedule
  from trainers import steps

  ctx = distributed.init()
  recipe, model, shape = _model(a.recipe, a.precision)
  optimizer = schedule.create_optimizer(recipe, recipe.learning_rate)
  if a.precision == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  optimizer.build(model.trainable_variables)
  distributed.broadcast_variables([v for v in model.variables if "seed_generator" not in v.path])
  images = tf.random.uniform((a.batch,) + tuple(shape), seed=ctx.rank)
  labels = tf.random.uniform((a.batch,), 0, 10, tf.int32, seed=ctx.rank)
  batches = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
  loop = steps.make_train_loop(model, optimizer, None, ctx, xla=a.xla)
  k = tf.constant(a.k, tf.int64)
  float(loop(batches, k)[0]["total_loss"])  # trace
  start = time.perf_counter()
  for _ in range(a.steps // a.k):
    float(loop(batches, k)[0]["total_loss"])
  seconds = time.perf_counter() - start
  return {
    "img_per_s": a.batch * ctx.size * (a.steps // a.k) * a.k / seconds,
    "workers": ctx.size,
    "rank": ctx.rank,
  }


def input_rate(a):
  import dataclasses

  from trainers import input_pipeline
  from trainers import recipes
  from trainers import shards

  recipe = recipes.get(a.recipe)
  meta = shards.load_metadata(a.data_dir)
  if recipe.augmentation:
    meta = dataclasses.replace(meta, augmentation=recipe.augmentation)
  start = time.perf_counter()
  it = iter(
    input_pipeline.make_dataset(
      a.data_dir,
      meta,
      "train",
      rank=0,
      size=1,
      batch_size=a.batch,
      training=True,
      seed=0,
      cache=not a.no_cache,
    )
  )
  next(it)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(a.steps):
    next(it)
  return {"img_per_s": a.batch * a.steps / (time.perf_counter() - start), "first_batch_s": first}


def flops(a):
  import tensorflow as tf
  from tensorflow.python.framework import convert_to_constants

  _, model, shape = _model(a.recipe)
  fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
    tf.TensorSpec((1,) + tuple(shape), tf.float32)
  )
  graph = convert_to_constants.convert_variables_to_constants_v2(fn).graph
  opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  opts["output"] = "none"
  forward = tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops
  # Training: forward + backward (gradients w.r.t. activations and weights) ~ 3x forward.
  return {
    "forward_flops_per_image": forward,
    "train_flops_per_image": 3 * forward,
    "params": model.count_params(),
  }


def devices(a):
  """What the GPU path needs, as this process sees it (no GPU memory is taken)."""
  import horovod.tensorflow as hvd
  import tensorflow as tf

  gpus = []
  for gpu in tf.config.list_physical_devices("GPU"):
    details = tf.config.experimental.get_device_details(gpu)
    gpus.append(
      {
        "name": details.get("device_name", gpu.name),
        "compute_capability": list(details.get("compute_capability", ())),
      }
    )
  build = tf.sysconfig.get_build_info()
  return {
    "tensorflow": tf.__version__,
    "cuda_build": bool(build.get("is_cuda_build")),
    "cuda": build.get("cuda_version"),
    "cudnn": build.get("cudnn_version"),
    "gpus": gpus,
    # Horovod 0.28.1: NCCL_VERSION_CODE of the NCCL it was compiled with, 0 without NCCL.
    "nccl_code": int(hvd.nccl_built()),
    "gloo": bool(hvd.gloo_built()),
  }


def known_tensor(rank, length):
  """Rank `rank`'s part of the allreduce check: multiples of 1/8 in [-128, 128).

  Every partial sum of up to 16,384 ranks is a float32 exactly, so the sum is
  the same bits in any reduction order (ring, tree, NCCL or Gloo).
  """
  import numpy as np

  i = np.arange(length, dtype=np.int64)
  return (((i * 7919 + (rank + 1) * 104729) % 2048 - 1024) / 8).astype(np.float32)


def allreduce(a):
  import horovod.tensorflow as hvd
  import numpy as np
  import tensorflow as tf

  from trainers import distributed

  ctx = distributed.init()  # as the trainer: one GPU per process, by local rank
  expected = sum(known_tensor(r, a.length).astype(np.float64) for r in range(ctx.size))
  expected = expected.astype(np.float32)
  x = tf.constant(known_tensor(ctx.rank, a.length))
  got = hvd.allreduce(x, op=hvd.Sum, name="gpu_check")
  bad = np.flatnonzero(got.numpy().view(np.uint32) != expected.view(np.uint32))
  return {
    "rank": ctx.rank,
    "size": ctx.size,
    "device": got.device,
    "elements": a.length,
    "mismatches": int(bad.size),
    "first_mismatch": (
      None if not bad.size else [int(bad[0]), float(got.numpy()[bad[0]]), float(expected[bad[0]])]
    ),
  }


def main():
  _pin()
  p = argparse.ArgumentParser()
  p.add_argument("what", choices=("fit", "synthetic", "input", "flops", "devices", "allreduce"))
  p.add_argument("--recipe", default="cifar10_tutorial")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--precision", default="float32")
  p.add_argument("--xla", action="store_true")
  p.add_argument("--data-dir")
  p.add_argument("--no-cache", action="store_true")
  p.add_argument("--length", type=int, default=2**22 + 3)
  a = p.parse_args()
  result = {
    "fit": fit,
    "synthetic": synthetic,
    "input": input_rate,
    "flops": flops,
    "devices": devices,
    "allreduce": allreduce,
  }[a.what](a)
  print("BENCH " + json.dumps(result), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
