"""nbmodel: Keras-style neural networks over NumPy arrays, trained by Numba kernels.

Importing the package compiles nothing and does not import numba: kernels
are imported (and compiled, or loaded from the disk cache) on first use, and
the submodules below that a script may not need load on first access.
"""
import importlib

__version__ = "0.1.0"

from . import config, initializers, layers, testing
from .config import get_num_threads, set_num_threads
from .data import PyDataset
from .initializers import set_random_seed
from .io import load_model
from .layers import Input
from .model import Model, Sequential

_LAZY = ("callbacks", "datasets", "explain", "losses", "metrics", "optimizers", "schedules", "parallel", "cli", "utils",
         "regularizers", "constraints")

__all__ = ["Input", "Model", "Sequential", "PyDataset", "load_model", "config", "initializers", "layers", "testing",
           "get_num_threads", "set_num_threads", "set_random_seed", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'nbmodel' has no attribute {name!r}")
