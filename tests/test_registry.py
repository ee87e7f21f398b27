"""The data-set registry (preprocess/datasets/): adding a spec is enough.

A test-only spec for a second image-folder data set, defined in a temporary
module on sys.path and registered there, is seen by the downloader, the
sample-data writer and the Beam job without touching any of them. A second
IDX data set (a Fashion-MNIST stand-in) imports the format from the MNIST spec
module, as a real one would, and converts the same way.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from preprocess import datasets
from preprocess import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPEC_MODULE = textwrap.dedent('''
    """Test-only data set: squares vs discs, image folders."""
    import numpy as np
    from PIL import Image

    from preprocess import atomic
    from preprocess import download
    from preprocess import imagefolder
    from preprocess.datasets import DatasetSpec, Sample, register

    def _write(root, train, test, rng_for_split):
      files = []
      for split, n in (("train", train), ("test", test)):
        rng = rng_for_split(split)
        for label, name in enumerate(("square", "disc")):
          for i in range(n):
            pixels = rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
            path = root / split / name / f"{name}.{i}.png"
            atomic.write_bytes(path, b"")
            Image.fromarray(pixels).save(path)
            files.append(path)
      return {"root": root, "counts": {"train": 2 * train, "test": 2 * test}, "files": files}

    SPEC = register(DatasetSpec(
        name="shapes_test",
        description="test-only squares and discs",
        class_names=("square", "disc"),
        layout=imagefolder.FolderLayout(),
        sources=(download.RemoteFile("shapes.zip", ("https://example.invalid/shapes.zip",),
                                     sha256="0" * 64),),
        validation_size=4,
        augmentation={"train": [{"op": "random_flip_left_right"}],
                      "eval": [{"op": "per_image_standardization"}]},
        sample=Sample(per_class={"small": (10, 3), "full": (20, 5)}, write=_write, stream=99),
    ))
''')

# Imported by the driver and by every Beam worker process, as a plugin would be.
LOADER = (
  "import runpy, sys; import {module}; "
  "sys.argv[0] = 'python -m pipeline.build_tfrecords'; "
  "runpy.run_module('pipeline.build_tfrecords', run_name='__main__')"
)


IDX_SPEC_MODULE = textwrap.dedent('''
    """Test-only data set in MNIST's IDX format: the format comes from the MNIST spec."""
    import struct

    import numpy as np

    from preprocess import atomic
    from preprocess import download
    from preprocess.datasets import DatasetSpec, Sample, mnist, register

    LAYOUT = mnist.IdxLayout(splits={
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    })

    def _write(root, train, test, rng_for_split):
      files, counts = [], {}
      for split, n in (("train", train), ("test", test)):
        rng = rng_for_split(split)
        labels = np.repeat(np.arange(3, dtype=np.uint8), n)
        pixels = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        images, labels_file = (root / base for base in LAYOUT.splits[split])
        atomic.write_bytes(images, struct.pack(">iiii", mnist.IMAGES_MAGIC, len(labels), 28, 28)
                           + pixels.tobytes())
        atomic.write_bytes(labels_file, struct.pack(">ii", mnist.LABELS_MAGIC, len(labels))
                           + labels.tobytes())
        files += [images, labels_file]
        counts[split] = len(labels)
      return {"root": root, "counts": counts, "files": files}

    SPEC = register(DatasetSpec(
        name="idx_test",
        description="test-only IDX data set",
        class_names=("shirt", "shoe", "bag"),
        layout=LAYOUT,
        sources=tuple(download.RemoteFile(base, ("https://example.invalid/" + base,),
                                          sha256="0" * 64)
                      for pair in LAYOUT.splits.values() for base in pair),
        validation_size=3,
        augmentation={"train": [{"op": "per_image_standardization"}],
                      "eval": [{"op": "per_image_standardization"}]},
        sample=Sample(per_class={"small": (5, 2), "full": (10, 4)}, write=_write, stream=98),
    ))
''')


def _spec_dir(tmp_path, monkeypatch, module, source, name):
  """Writes spec `module` into a folder on sys.path and imports it; yields the folder."""
  folder = tmp_path / "specs"
  folder.mkdir()
  (folder / f"{module}.py").write_text(source)
  monkeypatch.syspath_prepend(str(folder))
  imported = __import__(module)
  assert datasets.get(name) is imported.SPEC
  yield folder
  datasets.unregister(name)
  sys.modules.pop(module, None)


@pytest.fixture
def spec_dir(tmp_path, monkeypatch):
  yield from _spec_dir(tmp_path, monkeypatch, "shapes_test_spec", SPEC_MODULE, "shapes_test")


@pytest.fixture
def idx_spec_dir(tmp_path, monkeypatch):
  yield from _spec_dir(tmp_path, monkeypatch, "idx_test_spec", IDX_SPEC_MODULE, "idx_test")


def test_builtin_specs_are_registered_once_each():
  files = sorted(p.stem for p in (pathlib.Path(datasets.__file__).parent).glob("*.py"))
  assert sorted(datasets.names()) == [f for f in files if f != "__init__"]
  assert datasets.names()[:3] == ("cifar10", "mnist", "catdog")  # sample-stream order
  for name in datasets.names():
    spec = datasets.get(name)
    assert spec.name == name and spec.sources and spec.augmentation["train"]
  assert datasets.get("mnist").validation_size == 5000
  with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
    datasets.get("imagenet")


def test_a_new_spec_is_seen_by_download_sample_data_and_the_beam_job(spec_dir, tmp_path):
  from preprocess import download
  from preprocess import sample_data

  assert "shapes_test" in datasets.names()

  # Download: the CLI offers it, and the spec's layout decides what "installed" is.
  raw = tmp_path / "raw"
  result = sample_data.generate(raw, names=("shapes_test",), seed=0)
  assert result["shapes_test"]["counts"] == {"train": 20, "test": 6}
  assert sorted(p.name for p in (raw / "shapes_test").iterdir()) == ["test", "train"]
  lines = []
  assert download.download("shapes_test", raw, log=lines.append) == [
    raw / "shapes_test" / "train",
    raw / "shapes_test" / "test",
  ]
  assert "already in" in lines[0]
  with pytest.raises(SystemExit):
    download._parse_args(["--dataset", "nope", "--raw-dir", str(raw)])
  assert (
    download._parse_args(["--dataset", "shapes_test", "--raw-dir", str(raw)]).dataset
    == "shapes_test"
  )

  # Beam job: converts it with the spec's classes, validation size and policy.
  out = tmp_path / "out"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(spec_dir), ROOT]))
  run = subprocess.run(
    [
      sys.executable,
      "-c",
      LOADER.format(module="shapes_test_spec"),
      "--dataset",
      "shapes_test",
      "--raw-dir",
      str(raw),
      "--out-dir",
      str(out),
      "--image-size",
      "16",
      "--image-format",
      "png",
      "--progress-seconds",
      "0",
      "--direct_num_workers=1",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  meta = json.loads((out / "shapes_test" / "metadata.json").read_text())
  assert meta["dataset"] == "shapes_test" and meta["class_names"] == ["square", "disc"]
  assert meta["image_shape"] == [16, 16, 3]
  assert meta["splits"]["validation"]["num_examples"] == 4
  assert meta["splits"]["train"]["num_examples"] == 16
  assert meta["splits"]["test"]["num_examples"] == 6
  assert meta["augmentation"]["train"] == [{"op": "random_flip_left_right"}]
  assert meta["records"] == {"read": 26, "written": 26, "rejected": 0, "skipped": 0}


def test_a_new_spec_in_the_idx_format_needs_only_its_spec_file(idx_spec_dir, tmp_path):
  from preprocess import sample_data
  from preprocess.datasets import mnist

  assert "idx_test" in datasets.names() and "mnist" in datasets.names()
  assert isinstance(datasets.get("idx_test").layout, mnist.IdxLayout)
  raw = tmp_path / "raw"
  assert sample_data.generate(raw, names=("idx_test",), seed=0)["idx_test"]["counts"] == {
    "train": 15,
    "test": 6,
  }

  out = tmp_path / "out"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(idx_spec_dir), ROOT]))
  run = subprocess.run(
    [
      sys.executable,
      "-c",
      LOADER.format(module="idx_test_spec"),
      "--dataset",
      "idx_test",
      "--raw-dir",
      str(raw),
      "--out-dir",
      str(out),
      "--progress-seconds",
      "0",
      "--direct_num_workers=1",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  meta = json.loads((out / "idx_test" / "metadata.json").read_text())
  assert meta["class_names"] == ["shirt", "shoe", "bag"] and meta["image_shape"] == [28, 28, 1]
  assert {s: meta["splits"][s]["num_examples"] for s in meta["splits"]} == {
    "validation": 3,
    "train": 12,
    "test": 6,
  }
  assert meta["records"] == {"read": 21, "written": 21, "rejected": 0, "skipped": 0}


def _package(tmp_path, monkeypatch, name, modules):
  folder = tmp_path / name
  folder.mkdir()
  (folder / "__init__.py").write_text("")
  for module, text in modules.items():
    (folder / f"{module}.py").write_text(textwrap.dedent(text))
  monkeypatch.syspath_prepend(str(tmp_path))
  return registry.Registry(name, "ENTRY", "widget")


ENTRY = """
    import collections
    ENTRY = collections.namedtuple("Widget", "name size")({name!r}, {size})
"""


def test_the_registry_reads_one_attribute_of_each_file_on_first_use(tmp_path, monkeypatch):
  widgets = _package(
    tmp_path,
    monkeypatch,
    "widgets_pkg",
    {"small": ENTRY.format(name="small", size=1), "large": ENTRY.format(name="large", size=9)},
  )
  assert "widgets_pkg.small" not in sys.modules  # nothing imported yet
  assert list(widgets) == ["large", "small"] and widgets["small"].size == 1
  assert widgets.entry("large").size == 9
  with pytest.raises(ValueError, match="unknown widget 'medium'; valid names: large, small"):
    widgets.entry("medium")
  with pytest.raises(ValueError, match="widget 'small' is registered twice"):
    widgets.add(type(widgets["small"])("small", 2))


def test_an_entry_named_unlike_its_file_is_refused(tmp_path, monkeypatch):
  widgets = _package(tmp_path, monkeypatch, "misnamed_pkg", {"a": ENTRY.format(name="b", size=1)})
  with pytest.raises(ValueError, match=r"misnamed_pkg/a.py defines widget 'b'; .* its file name"):
    list(widgets)


def test_two_data_sets_may_not_share_a_sample_stream():
  clash = dataclasses.replace(datasets.get("mnist"), name="mnist_copy")
  with pytest.raises(ValueError, match="sample stream 1 is already 'mnist'"):
    datasets.register(clash)
  assert "mnist_copy" not in datasets.names()
