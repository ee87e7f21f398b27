"""Extending the project is one file each: a new data set and a new recipe, nothing else.

A copy of the repository gets two new files and no other change: a data-set
spec (preprocess/datasets/shapes.py, image folders, the format catdog uses) and
a recipe for it (trainers/recipes/shapes_net.py, marked as the data set's
default). In the copy, as a user would: the tests that read the registries
pass (with the new entries among their cases, and no test edited), the sample
data is written, the real Beam job converts it, `horovodrun -np 2 python -m
trainers --dataset shapes` trains the default recipe, and `--mode eval`
evaluates the run. docs/extending.md walks through the same two files.
"""

import filecmp
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

from preprocess import datasets
from tests.conftest import BIN
from tests.conftest import ROOT
from trainers import recipes

SPEC = textwrap.dedent('''
    """Squares and discs: a test-only data set in image folders (the format of catdog).

    Raw layout: shapes/{train,test}/{square,disc}/*.png; no download (the
    source below is never fetched by the test).
    """

    import numpy as np
    from PIL import Image

    from preprocess import atomic
    from preprocess import download
    from preprocess import imagefolder
    from preprocess.datasets import DatasetSpec
    from preprocess.datasets import Sample

    CLASS_NAMES = ("square", "disc")


    def _write_sample(root, train_per_class, test_per_class, rng_for_split):
      files = []
      for split, n in (("train", train_per_class), ("test", test_per_class)):
        rng = rng_for_split(split)
        for name in CLASS_NAMES:
          for i in range(n):
            path = root / split / name / f"{name}.{i}.png"
            atomic.write_bytes(path, b"")
            Image.fromarray(rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)).save(path)
            files.append(path)
      counts = {"train": 2 * train_per_class, "test": 2 * test_per_class}
      return {"root": root, "counts": counts, "files": files}


    SPEC = DatasetSpec(
      name="shapes",
      description="squares and discs, image folders (test only)",
      class_names=CLASS_NAMES,
      layout=imagefolder.FolderLayout(),
      sources=(
        download.RemoteFile(
          "shapes.zip", ("https://example.invalid/shapes.zip",), sha256="0" * 64
        ),
      ),
      validation_size=4,
      augmentation={
        "train": [{"op": "random_flip_left_right"}, {"op": "per_image_standardization"}],
        "eval": [{"op": "per_image_standardization"}],
      },
      sample=Sample(per_class={"small": (12, 4), "full": (24, 8)}, write=_write_sample, stream=97),
    )
''')

RECIPE = textwrap.dedent('''
    """A small convolutional net for the shapes data set (test only).

    Source: none; a stand-in for a recipe file written from a paper or a
    tutorial, with its numbers and where each comes from in this header.
    Trains in a few steps on the sample data:

        python -m trainers --dataset shapes
    """

    import keras

    from trainers.recipes import Recipe


    def build(num_classes, input_shape, weight_decay=None):
      """Conv 3x3/4 stride 2, global average pooling, dense logits (weight_decay unused)."""
      inputs = keras.Input(shape=input_shape, name="images")
      x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")(inputs)
      x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
      logits = keras.layers.Dense(num_classes, name="logits")(x)
      return keras.Model(inputs, logits, name="shapes_net")


    RECIPE = Recipe(
      name="shapes_net",
      dataset="shapes",
      default=True,
      build=build,
      optimizer="sgd",
      learning_rate=0.05,
      batch_size=4,
      max_steps=6,
      eval_on="validation",
      eval_every=3,
      log_every=1,
    )
''')

NEW_FILES = {"preprocess/datasets/shapes.py": SPEC, "trainers/recipes/shapes_net.py": RECIPE}

# The fast tests that read the data-set and recipe registries (the slow ones, which
# convert or train every data set, are left to `make test`): run in the copy with
# its own sources, they must pass with the new files and no test edited.
REGISTRY_TESTS = [
  "tests/test_recipes.py",
  "tests/test_imports.py",
  "tests/test_models.py::test_the_count_table_names_registered_recipes_and_every_seed_recipe",
  "tests/test_models.py::test_forward_pass_gives_float_logits",
  "tests/test_models.py::test_other_models_have_no_weight_decay",
  "tests/test_models.py::test_unknown_name_lists_valid_names",
  "tests/test_registry.py::test_builtin_specs_are_registered_once_each",
  "tests/test_registry.py::test_two_data_sets_may_not_share_a_sample_stream",
  "tests/test_augment.py::test_every_op_has_an_example_and_every_policy_uses_known_ops",
  "tests/test_download.py::test_default_sources_are_https_with_well_formed_digests",
  "tests/test_sample_data.py::test_cli_help",
  "tests/test_pipeline.py::test_missing_raw_data_is_a_clear_error",
]
# The cases that exist only because the registries hold the new entries.
NEW_CASES = [
  "test_models.py::test_forward_pass_gives_float_logits[shapes_net] PASSED",
  "test_models.py::test_other_models_have_no_weight_decay[shapes_net] PASSED",
]

# What is not the repository's source: the git store, the venv, caches and outputs.
NOT_SOURCE = {".git", ".venv", ".cache", ".pytest_cache", ".ruff_cache", "build", "data", "runs"}


def _ignore(folder, names):
  top = pathlib.Path(folder) == ROOT
  return [
    n for n in names if n == "__pycache__" or n.endswith(".egg-info") or (top and n in NOT_SOURCE)
  ]


def _differences(a, b):
  """Relative paths of files that are only in a, only in b, or differ (recursive)."""
  cmp = filecmp.dircmp(a, b, ignore=["__pycache__", *NOT_SOURCE])
  out = [n for n in cmp.left_only + cmp.right_only if not n.endswith(".egg-info")]
  out += [
    n
    for n in cmp.diff_files
    if not filecmp.cmp(pathlib.Path(a, n), pathlib.Path(b, n), shallow=False)
  ]
  for sub, sub_cmp in cmp.subdirs.items():
    out += [f"{sub}/{p}" for p in _differences(sub_cmp.left, sub_cmp.right)]
  return out


def _run(repo, args, np_=1):
  """Runs `python args...` (under horovodrun -np N if np_ > 1) in the copy, with its code."""
  cmd = [sys.executable, *map(str, args)]
  if np_ > 1:
    cmd = [str(BIN / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}", *cmd]
  env = dict(
    os.environ,
    PYTHONPATH=str(repo),
    TF_CPP_MIN_LOG_LEVEL="2",
    PATH=f"{BIN}:{os.environ.get('PATH', '')}",
  )
  result = subprocess.run(
    cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900, check=False
  )
  assert result.returncode == 0, (
    f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
  )
  return result


def test_a_new_data_set_and_recipe_are_one_file_each(tmp_path):
  repo = tmp_path / "repo"
  shutil.copytree(ROOT, repo, ignore=_ignore)
  for path, text in NEW_FILES.items():
    (repo / path).write_text(text)
  # Nothing else changed: the copy is the repository plus the two files.
  assert sorted(_differences(ROOT, repo)) == sorted(NEW_FILES)
  # This process runs the repository itself, which knows neither.
  assert "shapes" not in datasets.names() and "shapes_net" not in recipes.RECIPES

  # The registry tests, in the copy: the new data set and recipe are among their cases.
  # (-k: the 13-million-parameter ResNets are built by the repository's own run.)
  pytest = ["-m", "pytest", "-v", "-p", "no:cacheprovider", "-k", "not resnet"]
  tests = _run(repo, pytest + REGISTRY_TESTS).stdout
  for case in NEW_CASES:
    assert case in tests, tests[-3000:]
  assert " failed" not in tests and " passed" in tests

  raw, out, run_dir = tmp_path / "raw", tmp_path / "tfrecords", tmp_path / "run"
  _run(repo, ["-m", "preprocess.sample_data", "--dataset", "shapes", "--out-dir", raw])
  _run(
    repo,
    ["-m", "pipeline.build_tfrecords", "--dataset", "shapes", "--raw-dir", raw]
    + ["--out-dir", out, "--image-size", "16", "--progress-seconds", "0"],
  )
  meta = json.loads((out / "shapes" / "metadata.json").read_text())
  assert meta["class_names"] == ["square", "disc"] and meta["image_shape"] == [16, 16, 3]
  assert {s: v["num_examples"] for s, v in meta["splits"].items()} == {
    "train": 20,
    "validation": 4,
    "test": 8,
  }

  # The new recipe is the data set's default: no --recipe.
  help_text = _run(repo, ["-m", "trainers", "--dataset", "shapes", "--help"]).stdout
  assert "shapes_net" in help_text and "tiny" in help_text
  data = ["--dataset", "shapes", "--data-dir", out / "shapes", "--model-dir", run_dir]
  trained = _run(repo, ["-m", "trainers", *data, "--mode", "train", "--no-export"], np_=2)
  assert "step 6/6" in trained.stdout
  config = json.loads((run_dir / "config.json").read_text())
  assert config["dataset"] == "shapes" and config["recipe"]["name"] == "shapes_net"
  assert config["recipe"]["build"] == "trainers.recipes.shapes_net.build"
  assert config["recipe"]["augmentation"] == meta["augmentation"]
  assert config["workers"] == 2

  _run(repo, ["-m", "trainers", *data, "--mode", "eval"])
  metrics = json.loads((run_dir / "metrics.json").read_text())
  assert metrics["split"] == "test" and metrics["step"] == 6 and metrics["examples"] == 8
  assert 0.0 <= metrics["precision_at_1"] <= 1.0
