"""Each recipe learns: trained briefly on the sample data, it scores far above chance.

This is the end-to-end proof that raw files, the Beam job, the shards, the input
pipeline, the augmentation policy, the model and the loop fit together. The
sample images are class-dependent shapes and strokes, so short runs suffice.
Figures seen on 2 CPU cores: CIFAR-10 tutorial 0.998 (400 steps), cookbook 0.98,
MNIST basic 0.98, bn_dropout 0.998, ResNet 0.98, LeNet-5 cat/dog 0.78
(chance: 0.1, and 0.5 for cat/dog).
"""

import json

import pytest

from tests.conftest import run_trainer

pytestmark = pytest.mark.slow

# dataset, model, steps, batch per worker, minimum test precision@1
CASES = [
    ("cifar10", "cifar10_tutorial", 250, 64, 0.6),
    ("cifar10", "cifar10_cookbook", 250, 64, 0.6),
    ("mnist", "mnist_basic", 200, 100, 0.8),
    ("mnist", "mnist_bn_dropout", 150, 100, 0.8),
    ("mnist", "mnist_resnet", 120, 50, 0.8),
    ("catdog", "catdog_lenet5", 150, 32, 0.65),
]


@pytest.mark.parametrize("dataset, model, steps, batch, minimum", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_model_learns_far_above_chance(tfrecords, tmp_path, dataset, model, steps, batch, minimum):
  run_trainer(dataset, ["--recipe", model, "--data-dir", tfrecords / dataset, "--model-dir", tmp_path,
                        "--max-steps", steps, "--batch-size", batch, "--eval-every", 50,
                        "--log-every", 50, "--no-export"])
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["split"] == "test"
  assert metrics["precision_at_1"] >= minimum, metrics
