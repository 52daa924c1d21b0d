"""nbmodel: Keras-style neural networks over NumPy arrays, trained by Numba kernels.

Importing the package compiles nothing and does not import numba: kernels
are imported (and compiled, or loaded from the disk cache) on first use.
"""
__version__ = "0.1.0"

from . import config, initializers, layers, testing
from .config import get_num_threads, set_num_threads
from .initializers import set_random_seed

__all__ = ["config", "initializers", "layers", "testing", "get_num_threads", "set_num_threads",
           "set_random_seed", "__version__"]
