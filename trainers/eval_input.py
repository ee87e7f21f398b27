"""The evaluation input of a run: each split's batches built once, and kept in memory when small.

Sits between the input chain (trainers/input_pipeline.py builds the batches)
and the loop (trainers/train.py evaluates every --eval-every steps). A run
evaluates the same split again and again; building its tf.data chain (tracing
the decode) and decoding its images anew at each evaluation cost more than the
training steps in between for small models (issue 18: the tiny recipe, every 50
steps). The eval policy is deterministic, so the kept batches are exactly those
a new pass would give.
"""

import numpy as np

from preprocess import augment
from trainers import input_pipeline

# A rank's part of a split is kept in memory after its first pass when, as
# float32 pixels after the eval policy, it is at most this large (CIFAR-10's
# test split: 69 MB; MNIST's: 31 MB).
EVAL_CACHE_BYTES = 2**30


def cache_fits(metadata, split, *, rank, size):
  """Whether this rank's part of `split`, as the eval policy outputs it, fits EVAL_CACHE_BYTES."""
  plan = input_pipeline.plan_shards(metadata, split, rank=rank, size=size, training=False)
  shape = augment.output_shape(metadata.augmentation["eval"], metadata.image_shape)
  return plan.num_examples * int(np.prod(shape)) * 4 <= EVAL_CACHE_BYTES


class EvalInputs:
  """{(split, max_batches): batches}, built on first use by `make(split)`.

  Args:
    make: split -> a one-pass tf.data.Dataset of eval batches (the run's `dataset`).
    metadata: The data's `Metadata` (its policy sizes the cache).
    rank, size: This process's rank and the number of workers.
  """

  def __init__(self, make, metadata, *, rank, size):
    self._make = make
    self._metadata = metadata
    self._rank, self._size = rank, size
    self._inputs = {}

  def get(self, split, max_batches=None):
    key = (split, max_batches)
    if key not in self._inputs:
      batches = self._make(split)
      if max_batches is not None:
        batches = batches.take(max_batches)  # before the cache, so every pass completes it
      fits = cache_fits(self._metadata, split, rank=self._rank, size=self._size)
      self._inputs[key] = batches.cache() if fits else batches
    return self._inputs[key]
