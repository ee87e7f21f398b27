"""TensorFlow imported without its start-up banners (trainers/entry.py, trainers/run_dir.py).

A leaf module: the entry and the run directory both import TensorFlow through it,
and neither imports the other for it.
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
