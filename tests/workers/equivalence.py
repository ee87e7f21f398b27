"""Same examples, two ways: np=2 with B per worker vs np=1 with 2B, through the real train step.

Every rank builds the same model (same seed) and takes its slice of the same
global batches; the step averages gradients over ranks, so with a mean loss
and plain SGD the update equals one worker's update on the whole global batch.

    horovodrun -np 2 python tests/workers/equivalence.py --out F --global-batch 16
"""

import argparse

import keras
import numpy as np

from trainers import distributed
from trainers import recipes
from trainers import steps


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--global-batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  ctx = distributed.init()
  keras.utils.set_random_seed(7)
  model = recipes.get("mnist_basic").build_model(10, (28, 28, 1))  # no dropout, no batch norm
  optimizer = keras.optimizers.SGD(0.1)
  optimizer.build(model.trainable_variables)
  step = steps.make_train_step(model, optimizer, None, ctx)
  rng = np.random.default_rng(0)
  x = rng.random((args.steps, args.global_batch, 28, 28, 1), dtype=np.float32)
  y = rng.integers(0, 10, (args.steps, args.global_batch)).astype(np.int32)
  per = args.global_batch // ctx.size
  mine = slice(ctx.rank * per, (ctx.rank + 1) * per)
  for i in range(args.steps):
    step(x[i, mine], y[i, mine])
  if ctx.is_chief:
    np.savez(args.out, *[v.numpy() for v in model.trainable_variables])


if __name__ == "__main__":
  main()
