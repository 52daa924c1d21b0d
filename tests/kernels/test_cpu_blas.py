"""The kernels' matrix product (nbmodel/kernels/cpu/_blas.py): ``gemm`` inside a kernel
equals a @ b for every operand layout the kernels pass, on NumPy's BLAS where it runs
on one thread and on np.dot otherwise; the symbols are bound to NumPy's library."""
import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

from nbmodel.kernels.cpu._blas import NUMPY_BLAS, gemm, numpy_blas_route
from nbmodel.kernels.cpu._jit import jit

# the strided and column-slice operands are numba "A" arrays: np.dot warns it copies them
pytestmark = pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaPerformanceWarning")


@jit
def _gemm(a, b, out):
    gemm(a, b, out)


@jit
def _route(a, b, out):
    return numpy_blas_route(a, b, out)[0]


@jit
def _gemm_rows(a, b, out, r0, r1):
    # the conv weight gradient's form: a row block of both operands, the left transposed
    gemm(a[r0:r1].T, b[r0:r1], out)


def _numpy_blas(threads):
    """A context that runs NumPy's BLAS (the library NumPy itself calls) on ``threads``."""
    ctl = ThreadpoolController().select(user_api="blas")
    libs = [lib for lib in ctl.lib_controllers if "numpy" in (lib.filepath or "")]
    if not libs:
        pytest.skip("NumPy's BLAS is not a library of its own here")
    return ThreadpoolController().limit(limits=threads, user_api="blas")


def _operands(dtype, seed=0):
    """(name, a, b) for a 6 x 5 @ 5 x 4 product in every layout the kernels use."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((6, 5)).astype(dtype)
    b = rng.standard_normal((5, 4)).astype(dtype)
    wide_a = rng.standard_normal((6, 9)).astype(dtype)
    wide_a[:, :5] = a
    wide_b = rng.standard_normal((5, 7)).astype(dtype)
    wide_b[:, 2:6] = b
    return [
        ("rows", a, b),
        ("transposed left", np.ascontiguousarray(a.T).T, b),
        ("transposed right", a, np.ascontiguousarray(b.T).T),
        ("both transposed", np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T),
        ("column slices (lda > k, ldb > n)", wide_a[:, :5], wide_b[:, 2:6]),
        ("strided", np.repeat(a, 2, axis=1)[:, ::2], b),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_equals_the_product_in_every_layout(dtype, threads):
    for name, a, b in _operands(dtype):
        want = a.astype(np.float64) @ b.astype(np.float64)
        out = np.full((6, 4), np.nan, dtype)
        with _numpy_blas(threads):
            _gemm(a, b, out)
        tol = 1e-5 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol, err_msg=name)


def test_gemm_of_a_row_block_transposed():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 7)).astype(np.float32)
    b = rng.standard_normal((40, 3)).astype(np.float32)
    out = np.empty((7, 3), np.float32)
    with _numpy_blas(1):
        _gemm_rows(a, b, out, 9, 31)
    np.testing.assert_allclose(out, a[9:31].T.astype(np.float64) @ b[9:31], rtol=1e-5, atol=1e-5)


def test_empty_inner_dimension_gives_zeros():
    out = np.full((3, 2), np.nan, np.float32)
    with _numpy_blas(1):
        _gemm(np.empty((3, 0), np.float32), np.empty((0, 2), np.float32), out)
    assert (out == 0).all()


@pytest.mark.skipif(not NUMPY_BLAS, reason="NumPy's BLAS exports no CBLAS symbols here")
def test_route_follows_numpy_blas_threads_and_layout():
    """One thread: NumPy's BLAS unless the right operand is transposed or strided; more
    threads: np.dot. Also proves the bound symbol reads NumPy's library's thread count."""
    ops = dict((name, (a, b)) for name, a, b in _operands(np.float32))
    out = np.empty((6, 4), np.float32)
    with _numpy_blas(1):
        assert _route(*ops["rows"], out) == 111
        assert _route(*ops["transposed left"], out) == 112
        assert _route(*ops["column slices (lda > k, ldb > n)"], out) == 111
        assert _route(*ops["transposed right"], out) == 0
        assert _route(*ops["strided"], out) == 0
        assert _route(ops["rows"][0], ops["rows"][1], np.empty((4, 6), np.float32).T) == 0
    with _numpy_blas(2):
        assert _route(*ops["rows"], out) == 0
