"""Shared test helpers: paths to the venv's tools and a runner for horovodrun jobs."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


def run_horovod(np_, args, timeout=600, env=None):
  """Runs `horovodrun -np N -H localhost:N <python> args...` and returns the result.

  Uses the venv's horovodrun and python so the test does not depend on PATH.
  """
  cmd = [str(BIN / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}",
         sys.executable] + [str(a) for a in args]
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
  full_env.update(env or {})
  return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True,
                        timeout=timeout, check=False)


@pytest.fixture
def horovod():
  """The `run_horovod` helper, failing the test with the job's output on error."""
  def run(np_, args, **kwargs):
    result = run_horovod(np_, args, **kwargs)
    if result.returncode != 0:
      pytest.fail(f"horovodrun exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
                  f"\n--- stderr\n{result.stderr[-4000:]}")
    return result
  return run
