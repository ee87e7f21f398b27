#!/usr/bin/env bash
# `make demo`: the whole job on generated sample data, offline.
#   1. write small CIFAR-10, MNIST and cat/dog raw data in the official formats;
#   2. convert them to sharded TFRecords with the Beam job;
#   3. train the CIFAR-10 tutorial model with horovodrun -np NP and evaluate it.
# Usage: scripts/demo.sh SAMPLE_DIR NP
set -euo pipefail
cd "$(dirname "$0")/.."
sample=${1:-data/sample}
np=${2:-2}
py=.venv/bin/python

echo "== 1/3 sample raw data -> $sample/raw"
$py -m preprocess.sample_data --out-dir "$sample/raw"

echo "== 2/3 Beam conversion -> $sample/tfrecords"
# The sample MNIST training set has 3,000 images, fewer than the recipe's 5,000
# validation images, so the demo holds out 500.
for flags in "cifar10" "mnist --validation-size 500" "catdog"; do
  # shellcheck disable=SC2086  # $flags is a dataset name plus its flags
  $py -m pipeline.build_tfrecords --raw-dir "$sample/raw" --out-dir "$sample/tfrecords" \
    --overwrite --dataset $flags
done

if [ -x trainers/cifar10.py ]; then
  echo "== 3/3 horovodrun -np $np trainers/cifar10.py"
  .venv/bin/horovodrun -np "$np" -H "localhost:$np" "$py" trainers/cifar10.py \
    --data-dir "$sample/tfrecords/cifar10" --model-dir runs/demo/cifar10-tutorial --overwrite
  $py trainers/cifar10.py --mode eval --data-dir "$sample/tfrecords/cifar10" \
    --model-dir runs/demo/cifar10-tutorial
  echo "TensorBoard logs: runs/demo/cifar10-tutorial (make tensorboard LOGDIR=runs/demo)"
else
  echo "== 3/3 training: not built yet (issue: Training)"
fi
echo "demo done"
