#!/usr/bin/env python3
"""`python -m trainers --dataset cifar10` as a script of its own (trainers/__main__.py).

    horovodrun -np 4 trainers/cifar10.py [flags]     # one process per GPU
    python trainers/cifar10.py --help                 # one process

--recipe picks a file of trainers/recipes/ (those for cifar10, plus `tiny`); flag parsing is in
trainers/config.py, the loop in trainers/train.py.
"""

import os
import sys

if __name__ == "__main__":
  # Run as a script, sys.path[0] is trainers/; put the repository root there
  # instead so `import trainers` works without an install.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # Flags are parsed before TensorFlow is imported (trainers/entry.py).
  from trainers import entry

  sys.exit(entry.main("cifar10"))
