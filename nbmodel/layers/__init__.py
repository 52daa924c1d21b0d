"""Layers, by family: core.py, conv.py, pooling.py, normalization.py,
recurrent.py, embedding.py, attention.py, reshaping.py. Each family's kernels live in
nbmodel/kernels/cpu/<family>.py. Every family module lists its public layers
in ``__all__``; this package re-exports them (one import line per family).
"""
from . import attention as _attention
from . import conv as _conv
from . import core as _core
from . import embedding as _embedding
from . import normalization as _normalization
from . import pooling as _pooling
from . import recurrent as _recurrent
from . import reshaping as _reshaping
from .attention import *  # noqa: F401,F403
from .base import Input, InputLayer, KTensor, Layer
from .conv import *  # noqa: F401,F403
from .core import *  # noqa: F401,F403
from .embedding import *  # noqa: F401,F403
from .normalization import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
from .recurrent import *  # noqa: F401,F403
from .reshaping import *  # noqa: F401,F403

__all__ = ["Input", "InputLayer", "KTensor", "Layer"]
for _family in (_core, _normalization, _attention, _recurrent, _embedding, _conv, _pooling, _reshaping):
    __all__ += list(_family.__all__)
del _family
