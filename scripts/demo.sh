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
# Every data set with its defaults (the sample MNIST training set has 6,000
# images, so the recipe's 5,000 validation images leave 1,000 to train on).
$py -m pipeline.build_tfrecords --raw-dir "$sample/raw" --out-dir "$sample/tfrecords" \
  --overwrite --dataset all
# As make preprocess does: every shard's sha256 and CRCs against metadata.json.
$py -m pipeline.build_tfrecords --verify-data --dataset all --out-dir "$sample/tfrecords"

echo "== 3/3 horovodrun -np $np trainers/cifar10.py"
# A short run: the recipe's 1,000,000 steps are for real data on GPUs.
.venv/bin/horovodrun -np "$np" -H "localhost:$np" "$py" trainers/cifar10.py --recipe cifar10_tutorial \
  --data-dir "$sample/tfrecords/cifar10" --model-dir runs/demo/cifar10-tutorial --overwrite \
  --max-steps 300 --batch-size 64 --warmup-steps 100 --log-every 50 --eval-every 100 --mode train
echo "== evaluation of the saved checkpoint (EMA weights) on the test split"
$py trainers/cifar10.py --recipe cifar10_tutorial --mode eval --data-dir "$sample/tfrecords/cifar10" \
  --model-dir runs/demo/cifar10-tutorial
echo "checkpoints, metrics.json, export/ and TensorBoard logs: runs/demo/cifar10-tutorial"
echo "  .venv/bin/tensorboard --logdir runs/demo"
echo "demo done"
