"""The generic trainer entry: `python -m trainers --dataset NAME [flags]`, for any data set.

    horovodrun -np 4 python -m trainers --dataset cifar10 [flags]   # one process per GPU
    python -m trainers --dataset mnist --recipe mnist_resnet         # one process
    python -m trainers --help

A data set is a file of preprocess/datasets/ and a recipe a file of
trainers/recipes/; neither needs an entry of its own. trainers/cifar10.py,
mnist.py and catdog.py are this entry with --dataset fixed.
"""

import sys

from trainers import entry

if __name__ == "__main__":
  sys.exit(entry.main())
