"""`python -m bench.pinned SCRIPT ARGS...`: pins this Horovod worker to the core of its
local rank (with BENCH_PIN_LOCAL_RANK set), then runs SCRIPT as __main__. For (b) in
bench/speed.py: one core per worker."""

import runpy
import sys

from bench.workers import _pin

if __name__ == "__main__":
  _pin()
  sys.argv = sys.argv[1:]
  runpy.run_path(sys.argv[0], run_name="__main__")
