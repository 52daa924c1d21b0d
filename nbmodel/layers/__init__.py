"""Layers, by family: core.py, conv.py, pooling.py, normalization.py,
recurrent.py, embedding.py, attention.py. Each family's kernels live in
nbmodel/kernels/cpu/<family>.py. Every family module lists its public layers
in ``__all__``; this package re-exports them (one import line per family).
"""
from .base import Input, InputLayer, KTensor, Layer
from .core import *  # noqa: F401,F403
from . import core as _core

__all__ = ["Input", "InputLayer", "KTensor", "Layer"] + list(_core.__all__)
from .normalization import *  # noqa: F401,F403
from . import normalization as _normalization
__all__ += list(_normalization.__all__)
from .attention import *  # noqa: F401,F403
from . import attention as _attention
__all__ += list(_attention.__all__)
from .recurrent import *  # noqa
from . import recurrent as _recurrent
__all__ += list(_recurrent.__all__)
from .embedding import *  # noqa
from . import embedding as _embedding
__all__ += list(_embedding.__all__)
from .conv import *  # noqa
from . import conv as _conv
__all__ += list(_conv.__all__)
from .pooling import *  # noqa
from . import pooling as _pooling
__all__ += list(_pooling.__all__)
