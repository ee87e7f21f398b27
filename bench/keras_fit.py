"""The script a user would otherwise write: plain Keras `model.fit` on the Beam job's TFRecords.

The yardstick of bench/cli.py (`make bench`, issue 18). It reads the same shards
as the trainer (the files metadata.json lists), builds the same architecture
(the recipe's `build`, trainers/recipes/) with the same optimizer and learning
rate (and the recipe's moving average of the weights, with Keras's
`use_ema`), and augments with the same ops as the CIFAR-10 tutorial's
`distorted_inputs` (random 24x24 crop, flip, brightness 63, contrast 0.2-1.8,
standardization), written as the tf.data guide writes an input: parse and
decode once, cache, shuffle, augment per image, batch, prefetch. Then
`model.fit` with Keras's defaults. With --eval-every E it validates on the
test split (centre crop, standardization) every E steps, as the trainer
evaluates every --eval-every steps: `fit(epochs=steps / E, steps_per_epoch=E,
validation_data=...)`.

    python -m bench.keras_fit --data-dir D --recipe R --batch-size B --steps N [--eval-every E]

bench/cli.py times whole processes of it with two step counts, so start-up,
tracing and the first epoch's decoding cancel.
"""

import argparse
import json
import os
import sys

CROP = (24, 24)  # CIFAR-10's default train policy crops to 24x24 (the tutorial's)


def datasets(data_dir, batch_size):
  """(endless augmented train batches, one pass of test batches) from the shards."""
  import tensorflow as tf

  with open(os.path.join(data_dir, "metadata.json")) as f:
    metadata = json.load(f)
  shape = metadata["image_shape"]
  spec = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
  }

  def records(split):
    files = [os.path.join(data_dir, s["file"]) for s in metadata["splits"][split]["shards"]]
    return tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)

  def parse(record):
    features = tf.io.parse_single_example(record, spec)
    image = tf.ensure_shape(tf.io.decode_image(features["image/encoded"], shape[2]), shape)
    return tf.cast(image, tf.float32), tf.cast(features["image/class/label"], tf.int32)

  def augment(image, label):
    image = tf.image.random_crop(image, [CROP[0], CROP[1], shape[2]])
    image = tf.image.random_flip_left_right(image)
    image = tf.image.random_brightness(image, max_delta=63)
    image = tf.image.random_contrast(image, lower=0.2, upper=1.8)
    return tf.image.per_image_standardization(image), label

  def centre(image, label):
    image = tf.image.resize_with_crop_or_pad(image, CROP[0], CROP[1])
    return tf.image.per_image_standardization(image), label

  auto = tf.data.AUTOTUNE
  train = records("train").map(parse, num_parallel_calls=auto).cache().shuffle(10_000).repeat()
  train = train.map(augment, num_parallel_calls=auto).batch(batch_size, drop_remainder=True)
  test = records("test").map(parse, num_parallel_calls=auto).map(centre, num_parallel_calls=auto)
  return train.prefetch(auto), test.batch(batch_size).prefetch(auto)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data-dir", required=True)
  p.add_argument("--recipe", default="cifar10_tutorial")
  p.add_argument("--batch-size", type=int, default=None, help="Default: the recipe's.")
  p.add_argument("--steps", type=int, required=True)
  p.add_argument(
    "--eval-every", type=int, default=0, help="Validate on the test split every N steps (0: never)."
  )
  a = p.parse_args(argv)
  if a.eval_every and a.steps % a.eval_every:
    p.error("--steps must be a multiple of --eval-every")
  import keras

  from trainers import recipes

  recipe = recipes.get(a.recipe)
  batch = a.batch_size or recipe.batch_size
  model = recipe.build_model(10, CROP + (3,))
  optimizer = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}[recipe.optimizer]
  # The recipe's weight averaging (the tutorial's EMA), as Keras's optimizers offer it.
  ema = dict(use_ema=True, ema_momentum=recipe.ema_decay) if recipe.ema_decay else {}
  model.compile(
    optimizer(recipe.learning_rate, **ema),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
  )
  train, test = datasets(a.data_dir, batch)
  every = a.eval_every or a.steps
  model.fit(
    train,
    epochs=a.steps // every,
    steps_per_epoch=every,
    validation_data=test if a.eval_every else None,
    verbose=0,
  )
  print(f"fit {a.steps} steps", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
