"""What `python -m trainers` and trainers/cifar10.py, mnist.py, catdog.py run: flags, then TF.

The first stop of a training run, before the data flow proper: `main` parses
and checks the flags and reads back the run the model dir holds
(trainers/config.py, which imports no TensorFlow), so `--help`,
`--print-config` and a bad flag answer in well under a second; only then does it import
the run (trainers/runner.py and the loop it calls, which bring in TensorFlow,
Keras and Horovod) and run it. The import is done with the process's stderr captured, and the start-up
banners that TensorFlow's C++ logging prints whatever TF_CPP_MIN_LOG_LEVEL says
(the oneDNN notice, absl's "before InitializeLog" line) are dropped from it;
every other line is passed on, so a real warning still shows.
"""

import contextlib
import os
import sys
import tempfile

# Lines of the libraries' start-up chatter, by a substring of each. They are
# printed once per process (so once per rank under horovodrun) and say nothing
# the user can act on; TF_ENABLE_ONEDNN_OPTS is left as it is (oneDNN is faster).
BANNERS = (
  "All log messages before absl::InitializeLog() is called are written to STDERR",
  "oneDNN custom operations are on",
  "This TensorFlow binary is optimized to use available CPU instructions",
  "To enable the following instructions",
  "Unable to register cuDNN factory",
  "Unable to register cuFFT factory",
  "Unable to register cuBLAS factory",
  "could not find cuda drivers",
  "Could not find cuda drivers",
  "computation placer already registered",
)


@contextlib.contextmanager
def quiet_imports(banners=BANNERS):
  """Within the block, stderr (fd 2, where C++ logs go) is held; banner lines are dropped after it."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      for line in held.read().decode("utf-8", "replace").splitlines(keepends=True):
        if not any(b in line for b in banners):
          sys.stderr.write(line)
      sys.stderr.flush()


def main(dataset=None, argv=None):
  """Parses the flags, then imports and runs the loop; returns the exit code.

  `dataset` is trainers/<dataset>.py's, or None for `python -m trainers --dataset NAME`.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO/WARNING lines after start-up
  from trainers import stops  # imports nothing slow

  # From here on a stop signal is one line and status 75 in every phase (trainers/stops.py).
  with stops.installed():
    try:
      from trainers import config as config_lib

      config, overrides = config_lib.resolve(dataset, sys.argv[1:] if argv is None else argv)
      with quiet_imports():
        from trainers import runner
    except stops.Stopped as e:
      print(e, flush=True)
      return stops.EXIT_STOPPED
    return runner.main(config.dataset, config=config, overrides=overrides)
