"""Where the benchmarks find the repository: a leaf module every bench module may import.

bench/run.py runs the other benchmark modules (bench/cli.py, speed.py, ...),
and they need the repository root to start their processes in; it lives here,
not in run.py, so that no benchmark module imports its runner back.
"""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
