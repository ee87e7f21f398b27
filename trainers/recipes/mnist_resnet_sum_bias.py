"""The MNIST ResNet's first version: a bias after each residual sum (the 11% failure).

Everything as trainers/recipes/mnist_resnet.py (see its header for the
sources) except a bias (initialized to 0.1, like every bias of the recipe)
added to each residual sum before its ReLU. The recipe reports 11.35% test
accuracy with it and 95.19% without; train both to compare:

    trainers/mnist.py --recipe mnist_resnet_sum_bias
    trainers/mnist.py --recipe mnist_resnet

13,071,562 parameters (mnist_resnet's 13,070,794 plus 3 x 256).
"""

import dataclasses
import functools

from trainers.recipes import mnist_resnet

build = functools.partial(mnist_resnet.build, sum_bias=True)
build.__module__, build.__name__ = __name__, "build"  # how config.json names the builder

RECIPE = dataclasses.replace(mnist_resnet.RECIPE, name="mnist_resnet_sum_bias", build=build)
