"""nbmodel: Keras-style neural networks over NumPy arrays, trained by Numba kernels.

Importing the package compiles nothing and does not import numba: kernels
are imported (and compiled, or loaded from the disk cache) on first use.
"""
__version__ = "0.1.0"

from . import callbacks, config, datasets, explain, initializers, layers, losses, metrics, optimizers, schedules, testing
from .config import get_num_threads, set_num_threads
from .initializers import set_random_seed
from .io import load_model
from .model import Model, Sequential

__all__ = ["Model", "Sequential", "load_model", "callbacks", "config", "datasets", "explain", "initializers",
           "layers", "losses", "metrics", "optimizers", "schedules", "testing", "get_num_threads",
           "set_num_threads", "set_random_seed", "__version__"]
