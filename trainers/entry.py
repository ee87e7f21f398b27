"""What `python -m trainers` and trainers/cifar10.py, mnist.py, catdog.py run: flags, then TF.

The first stop of a training run, before the data flow proper: `main` parses
and checks the flags and reads back the run the model dir holds
(trainers/config.py, which imports no TensorFlow), so `--help`,
`--print-config` and a bad flag answer in well under a second; only then does it import
the run (trainers/runner.py and the loop it calls, which bring in TensorFlow,
Keras and Horovod) and run it. The import is done with the process's stderr captured, and the start-up
banners that TensorFlow's C++ logging prints whatever TF_CPP_MIN_LOG_LEVEL says
(the oneDNN notice, absl's "before InitializeLog" line; trainers/quiet.py) are dropped from it;
every other line is passed on, so a real warning still shows.
"""

import os
import sys

from trainers.quiet import quiet_imports


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
