"""Run under `horovodrun -np 2`: trains a tiny Keras 3 model on different data per rank.

Each rank starts from differently seeded weights and sees its own random data,
averages gradients through `trainers.distributed`, and broadcasts model and
optimizer state from rank 0 after the first step. It saves its initial and final
weights to `<out>/rank<R>.npz`; tests/test_horovod.py compares them across ranks.
"""

import argparse
import os

import keras
import numpy as np
import tensorflow as tf

from trainers import distributed


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--compression", action="store_true")
  args = parser.parse_args()

  ctx = distributed.init()
  keras.utils.set_random_seed(100 + ctx.rank)  # different start per rank on purpose
  model = keras.Sequential(
    [
      keras.Input((8, 8, 1)),
      keras.layers.Conv2D(4, 3, activation="relu"),
      keras.layers.Flatten(),
      keras.layers.Dense(3),
    ]
  )
  optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  rng = np.random.default_rng(ctx.rank)  # different data per rank
  x = rng.normal(size=(args.steps, 16, 8, 8, 1)).astype("float32")
  y = rng.integers(0, 3, size=(args.steps, 16))

  @tf.function
  def step(xb, yb):
    with tf.GradientTape() as tape:
      loss = loss_fn(yb, model(xb, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    grads = distributed.average_gradients(grads, compression=args.compression)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  initial = [v.numpy() for v in model.trainable_variables]
  for i in range(args.steps):
    step(x[i], y[i])
    if i == 0:
      # Optimizer slots exist only after the first apply, so broadcast now.
      distributed.broadcast_variables(model.variables + optimizer.variables)
  final = [v.numpy() for v in model.trainable_variables]
  np.savez(
    os.path.join(args.out, f"rank{ctx.rank}.npz"),
    **{f"initial_{i}": w for i, w in enumerate(initial)},
    **{f"final_{i}": w for i, w in enumerate(final)},
    size=ctx.size,
  )


if __name__ == "__main__":
  main()
