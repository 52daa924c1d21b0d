"""Process-wide settings: float type, default device, fastmath flags, thread policy.

This module must stay cheap to import: it never imports numba at module level,
so ``import nbmodel`` compiles nothing and starts no thread pool.
"""
from __future__ import annotations

import ctypes
import os
import sys

# OpenMP workers (numba's thread pool) spin after each parallel region by
# default; on a 2-core machine they then hold the core that the BLAS call which
# follows needs. Measured on the cnn conv layers at 2 threads: forward+backward
# 10-40x slower than with passive waiting. Read when libgomp loads, so set here,
# before numba starts its pool; a value the user set wins.
# Idle OpenBLAS workers spin 2**28 cycles by default; 2**4 lets them sleep at
# once. Reaches the BLAS libraries loaded after this import (SciPy's, which
# numba's np.dot calls); those loaded before (NumPy's, usually) are restarted
# with it (_quiet_openblas_loaded_before). Measured, cnn step at 2 threads on
# the shared 2-core machine: 1.5 s with the default, 53 ms with this (PyTorch:
# 39 ms).
_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
# the ones this import set (not the user): a process that runs another framework for
# comparison (nbmodel bench --vs torch) starts without them
ENV_SET_HERE = tuple(k for k in _ENV_DEFAULTS if k not in os.environ)
_IMPORTED_BEFORE = frozenset(sys.modules)
for _k in ENV_SET_HERE:
    os.environ[_k] = _ENV_DEFAULTS[_k]

import numpy as np  # noqa: E402


def numpy_blas_library():
    """ctypes handle through which NumPy's bundled OpenBLAS (``scipy_openblas64_``
    symbols) is reached, or None. dlsym on NumPy's extension module searches the
    libraries it links, so no path to the BLAS itself is needed."""
    try:
        from numpy._core import _multiarray_umath

        lib = ctypes.CDLL(_multiarray_umath.__file__)
        lib.scipy_cblas_sgemm64_, lib.openblas_read_env, lib.blas_thread_shutdown_  # noqa: B018
        return lib
    except (ImportError, OSError, AttributeError):
        return None


def _quiet_openblas_loaded_before() -> bool:
    """Give the OpenBLAS libraries loaded before this import the short idle spin they
    missed; True when NumPy's own has it now (or never lacked it).

    NumPy imported before nbmodel (the usual order) loaded its OpenBLAS before the
    timeout above was set, and SciPy's too where ``scipy.linalg`` was imported (by
    the script, or by a library it imports): their idle workers then spin 2**28
    cycles after every threaded product, about 100 ms of a core measured here,
    against the kernels' threads and the next parallel region. SciPy's is the BLAS
    the kernels' threaded products use. OpenBLAS reads the setting when its pool
    starts, so each library re-reads the environment and stops its pool; its next
    threaded product starts it again with the short spin. Done once, at import:
    stopping a pool under a product that another thread is running would not be
    safe, and scripts import before they compute.
    """
    if "numpy" not in _IMPORTED_BEFORE or "OPENBLAS_THREAD_TIMEOUT" not in ENV_SET_HERE:
        return True
    from threadpoolctl import ThreadpoolController

    for controller in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        try:  # the library is loaded, so this only returns its handle
            lib = ctypes.CDLL(controller.filepath)
            read_env, shutdown = lib.openblas_read_env, lib.blas_thread_shutdown_
        except (OSError, AttributeError):  # pragma: no cover - an OpenBLAS older than 0.3
            continue
        read_env()
        shutdown()
    return numpy_blas_library() is not None  # NumPy's bundled OpenBLAS: one of those restarted


# True when NumPy's BLAS may still spin after a threaded product (a NumPy linked to a
# BLAS other than its bundled OpenBLAS, imported before nbmodel). Kernels that would call
# NumPy's BLAS between numba's parallel regions use the kernels' BLAS (SciPy's) instead.
NUMPY_BLAS_SPINS = not _quiet_openblas_loaded_before()

# fastmath flags for every CPU kernel. Never "nnan"/"ninf": they let LLVM delete
# the NaN checks that training relies on to stop on a non-finite loss. Never
# "reassoc": a kernel that calls another one links its own re-optimized copy of
# the callee, and which copy runs depends on what the process loaded first (a
# cold or a warm kernel cache); with reassoc the copies round differently and
# the same seeded training ends with other weights. Reductions that must
# vectorize keep explicit partial sums instead (see docs/performance.md).
# Changing this set needs a cleared kernel cache: numba's cache key ignores it.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn"})

_FLOATX = "float32"
_DEFAULT_DEVICE = os.environ.get("NBMODEL_DEVICE", "cpu")
_num_threads: int | None = None
_STEP_TIMEOUT = float(os.environ.get("NBMODEL_STEP_TIMEOUT", 900.0))


def default_device() -> str:
    """Name of the device that layers, losses and optimizers use until a model
    sets theirs (``NBMODEL_DEVICE``, else "cpu")."""
    return _DEFAULT_DEVICE


def set_default_device(name: str) -> None:
    """Set the device of models and layers created from now on, by registered name."""
    global _DEFAULT_DEVICE
    if not isinstance(name, str) or not name:
        raise ValueError(f"set_default_device: expected a device name, got {name!r}")
    _DEFAULT_DEVICE = name


def floatx() -> str:
    """Name of the default float type of new layers ("float32" or "float64")."""
    return _FLOATX


def set_floatx(value: str) -> None:
    """Set the default float type of layers built from now on."""
    global _FLOATX
    if value not in ("float32", "float64"):
        raise ValueError(f"set_floatx: expected 'float32' or 'float64', got {value!r}")
    _FLOATX = value


def step_timeout() -> float:
    """Seconds a data-parallel step may take before ``fit`` gives up on a stopped,
    stuck or dead worker or MPI rank and raises an error naming it
    (``NBMODEL_STEP_TIMEOUT``, else 900: generous, the first step compiles kernels)."""
    return _STEP_TIMEOUT


def set_step_timeout(seconds: float) -> None:
    """Set the per-step deadline of data-parallel training (see ``step_timeout``)."""
    global _STEP_TIMEOUT
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"set_step_timeout: expected a positive number of seconds, got {seconds!r}")
    _STEP_TIMEOUT = value


def standardize_dtype(dtype) -> np.dtype:
    """np.dtype of a layer's float type; None means floatx()."""
    dt = np.dtype(floatx() if dtype is None else dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"layers compute in float32 or float64, got dtype {dt}")
    return dt


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for everything: numba's pool and both BLAS pools.

    numba's ``np.dot`` calls SciPy's BLAS while NumPy uses its own; left alone,
    both pools plus numba's own threads oversubscribe the cores, which is the
    single largest loss of CPU speed. One policy sets all three together.
    """
    global _num_threads
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:  # load the BLAS numba's np.dot calls (SciPy's) now, so the limit below reaches it
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:  # pragma: no cover - numba then has no BLAS at all
        pass
    threadpool_limits(limits=n, user_api="blas")
    _num_threads = n


class kernel_blas_serial:
    """Context: the BLAS libraries the kernels call (SciPy's, which numba's
    ``np.dot`` uses, and NumPy's, which ``kernels.cpu._blas.gemm`` uses when it
    runs on one thread) on one thread.

    For kernels whose ``prange`` blocks each run their own GEMM (conv over
    blocks of images): every thread then owns a whole product, and BLAS's pool
    does not spin against numba's. Restores the policy's count on exit. A
    ctypes call each way per library (about 2 us), so it can wrap every kernel
    launch.
    """

    _libs: list | None = None

    def __enter__(self):
        cls = type(self)
        if cls._libs is None:
            import scipy.linalg.cython_blas  # noqa: F401 - loaded, so threadpoolctl sees it
            from threadpoolctl import ThreadpoolController

            cls._libs = ThreadpoolController().select(user_api="blas").lib_controllers
        for lib in cls._libs:
            lib.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        for lib in type(self)._libs:
            lib.set_num_threads(get_num_threads())
        return False


def get_num_threads() -> int:
    """Threads in use (set by set_num_threads, else all available cores)."""
    return _num_threads if _num_threads is not None else available_cores()


def ensure_thread_policy() -> None:
    """Apply the default policy once, the first time a kernel is about to run."""
    if _num_threads is None:
        set_num_threads(int(os.environ.get("NBMODEL_NUM_THREADS", available_cores())))
