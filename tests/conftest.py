"""Shared test helpers: paths to the venv's tools and a runner for horovodrun jobs."""

import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


def run_horovod(np_, args, timeout=600, env=None):
  """Runs `horovodrun -np N -H localhost:N <python> args...` and returns the result.

  Uses the venv's horovodrun and python so the test does not depend on PATH.
  """
  cmd = [str(BIN / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}", sys.executable] + [
    str(a) for a in args
  ]
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
  full_env.update(env or {})
  return subprocess.run(
    cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
  )


@pytest.fixture
def horovod():
  """The `run_horovod` helper, failing the test with the job's output on error."""

  def run(np_, args, **kwargs):
    result = run_horovod(np_, args, **kwargs)
    if result.returncode != 0:
      pytest.fail(
        f"horovodrun exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
        f"\n--- stderr\n{result.stderr[-4000:]}"
      )
    return result

  return run


def run_beam_job(dataset, raw, out, *flags, timeout=600, check=True):
  """Runs `python -m pipeline.build_tfrecords` on one data set, as users do; returns the result.

  With check=True a non-zero exit fails the test with the job's stderr.
  """
  cmd = [sys.executable, "-m", "pipeline.build_tfrecords", "--dataset", dataset]
  cmd += ["--raw-dir", str(raw), "--out-dir", str(out), *[str(f) for f in flags]]
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  result = subprocess.run(
    cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, check=False
  )
  if check and result.returncode != 0:
    pytest.fail(f"the Beam job failed ({result.returncode}):\n{result.stderr[-3000:]}")
  return result


# Validation records the tests count on in the seed data sets' sample data.
SAMPLE_VALIDATION = {"cifar10": 250, "mnist": 500, "catdog": 40}


def sample_validation_size(name):
  """Records `tfrecords` holds out for validation in data set `name`'s (small) sample data.

  The table's number for the data sets it names; else the spec's
  validation_size when the sample leaves at least half its training records,
  else a tenth of them.
  """
  from preprocess import datasets

  if name in SAMPLE_VALIDATION:
    return SAMPLE_VALIDATION[name]
  spec = datasets.get(name)
  train = spec.sample.per_class["small"][0] * len(spec.class_names)
  if 0 < spec.validation_size <= train // 2:
    return spec.validation_size
  return max(1, train // 10)


@pytest.fixture(scope="session")
def tfrecords(tmp_path_factory):
  """Sample data of every registered data set, converted by the real Beam job once per session.

  Returns the output root: <root>/<name> for each name of preprocess/datasets/.
  """
  from preprocess import datasets
  from preprocess import sample_data

  raw = tmp_path_factory.mktemp("raw")
  out = tmp_path_factory.mktemp("tfrecords")
  sample_data.generate(str(raw), seed=0)
  for dataset in datasets.names():
    validation = sample_validation_size(dataset)
    run_beam_job(dataset, raw, out, "--num-shards", 4, "--validation-size", validation)
  return out


def wait_for_checkpoint(model_dir, min_step, timeout=300):
  """Waits until model_dir/checkpoints holds a checkpoint of step >= min_step; returns its step.

  Complete checkpoints are found by listing, as the trainer finds them: after a
  kill -9 the newest one may be newer than TensorFlow's state file says.
  """
  from trainers import state

  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = state.checkpoint_steps(str(pathlib.Path(model_dir) / "checkpoints"))
    if steps and steps[-1] >= min_step:
      return steps[-1]
    time.sleep(0.5)
  pytest.fail(f"no checkpoint of step >= {min_step} in {model_dir} after {timeout} s")


def trainer_cmd(dataset):
  """The command that trains `dataset` as users do: trainers/<dataset>.py if the data set
  has that script, else the generic `python -m trainers --dataset <dataset>` (a data set
  added as one file has no script of its own)."""
  script = ROOT / "trainers" / f"{dataset}.py"
  if script.exists():
    return [str(script)]
  return [sys.executable, "-m", "trainers", "--dataset", dataset]


def run_trainer(dataset, flags, np_=1, timeout=900, check=True):
  """Runs `trainer_cmd(dataset)` as users do: directly, or under horovodrun -np N."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
  cmd = trainer_cmd(dataset) + [str(f) for f in flags]
  if np_ > 1:
    cmd = [str(BIN / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}"] + cmd
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  if check and result.returncode != 0:
    pytest.fail(
      f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
      f"\n--- stderr\n{result.stderr[-4000:]}"
    )
  return result


def hparams_session(model_dir):
  """The HParams session a run dir's TensorBoard shows: {column: value}, read from the one
  event file at its top (tensorboard's hparams plugin data)."""
  from tensorboard.plugins.hparams import plugin_data_pb2
  import tensorflow as tf

  (path,) = pathlib.Path(model_dir).glob("events.out.tfevents.*")
  for record in tf.data.TFRecordDataset(str(path)):
    for v in tf.compat.v1.Event.FromString(record.numpy()).summary.value:
      if v.tag == "_hparams_/session_start_info":
        data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
        return {
          k: getattr(h, h.WhichOneof("kind")) for k, h in data.session_start_info.hparams.items()
        }
  raise AssertionError(f"no HParams session in {path}")
