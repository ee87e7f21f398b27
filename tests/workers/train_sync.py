"""Run under `horovodrun -np 2`: the real trainer for a few steps; each rank saves its state.

Saves `<out>/rank<R>.npz` with the rank's weights before the start-up broadcast
(ranks are seeded differently), every model, optimizer and EMA variable after
training, and the source ids of the eval split this rank read.

    horovodrun -np 2 python tests/workers/train_sync.py --out DIR --dataset cifar10 [trainer flags]
"""

import argparse
import os

import numpy as np

from trainers import config as config_lib
from trainers import distributed
from trainers import input_pipeline
from trainers import train


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--dataset", required=True)
  args, trainer_flags = parser.parse_known_args()
  config = config_lib.parse(args.dataset, trainer_flags)
  ctx = distributed.init()
  run = train.Run(config, ctx)
  arrays = {f"initial_{i}": v.numpy() for i, v in enumerate(run.model.trainable_variables)}
  step, _ = train.train(run)
  # Dropout seed-generator states are per rank on purpose (different masks).
  state = [v for v in run.model.variables if "seed_generator" not in v.path]
  state += list(run.optimizer.variables)
  state += run.ema.shadows if run.ema else []
  arrays.update({f"final_{i}": np.asarray(v.numpy()) for i, v in enumerate(state)})
  ids = []
  for _, _, batch_ids in input_pipeline.make_dataset(
    config.data_dir,
    run.metadata,
    "test",
    rank=ctx.rank,
    size=ctx.size,
    batch_size=16,
    training=False,
    seed=0,
    with_ids=True,
  ):
    ids += [i.decode() for i in batch_ids.numpy()]
  np.savez(
    os.path.join(args.out, f"rank{ctx.rank}.npz"),
    step=step,
    size=ctx.size,
    ids=np.array(ids),
    **arrays,
  )


if __name__ == "__main__":
  main()
