"""The Horovod build and gradient synchronization, with real `horovodrun -np 2` jobs."""

import subprocess

import numpy as np
import pytest

from tests.conftest import BIN
from tests.conftest import ROOT


def test_check_build_lists_tensorflow_and_gloo():
  out = subprocess.run(
    [str(BIN / "horovodrun"), "--check-build"], capture_output=True, text=True, check=True
  ).stdout
  assert "[X] TensorFlow" in out
  assert "[X] Gloo" in out


def _load_weights(path):
  data = np.load(path)
  n = len([k for k in data.files if k.startswith("final_")])
  return [data[f"initial_{i}"] for i in range(n)], [data[f"final_{i}"] for i in range(n)]


@pytest.mark.parametrize("compression", [False, True], ids=["fp32", "fp16-compressed"])
def test_two_ranks_end_bitwise_identical(horovod, tmp_path, compression):
  args = [ROOT / "tests/workers/hvd_sync.py", "--out", tmp_path, "--steps", "5"]
  horovod(2, args + (["--compression"] if compression else []))
  init0, final0 = _load_weights(tmp_path / "rank0.npz")
  init1, final1 = _load_weights(tmp_path / "rank1.npz")
  assert int(np.load(tmp_path / "rank0.npz")["size"]) == 2
  # Ranks start from different seeds and see different data ...
  assert any(not np.array_equal(a, b) for a, b in zip(init0, init1))
  # ... yet after the broadcast and four averaged steps they agree to the bit,
  for a, b in zip(final0, final1):
    assert a.dtype == b.dtype and np.array_equal(a, b)
  # and training moved the weights.
  assert any(not np.array_equal(a, b) for a, b in zip(init0, final0))
