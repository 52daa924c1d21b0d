"""Layers, by family: core.py, conv.py, pooling.py, normalization.py,
recurrent.py, embedding.py, attention.py. Each family's kernels live in
nbmodel/kernels/cpu/<family>.py. Every family module lists its public layers
in ``__all__``; this package re-exports them (one import line per family).
"""
from .base import Input, InputLayer, KTensor, Layer
from .core import *  # noqa: F401,F403
from . import core as _core

__all__ = ["Input", "InputLayer", "KTensor", "Layer"] + list(_core.__all__)
