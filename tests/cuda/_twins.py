"""What the CUDA convolution-family tests share: the contract's scratch callable, the
comparison with the CPU twin's arrays, and one forward + backward run of a convolution
kind on both devices (conv, conv_transpose, depthwise: the same argument lists)."""
import numpy as np

from nbmodel.kernels import codes


class Scratch:
    """The contract's ``scratch(key, shape, dtype)``: one array per key, shape and dtype."""

    def __init__(self, alloc):
        self.alloc = alloc
        self.arrays = {}

    def __call__(self, key, shape, dtype=None):
        k = (key, tuple(shape), np.dtype(dtype))
        if k not in self.arrays:
            self.arrays[k] = self.alloc(tuple(shape), dtype)
        return self.arrays[k]


def assert_twins_close(got, want, what, tol, equal_nan=False):
    """``got`` (the CUDA result, on the host) equals the CPU twin's ``want`` to ``tol[dtype]``."""
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}"
    np.testing.assert_allclose(got, want, equal_nan=equal_nan, err_msg=what, **tol[want.dtype.type])


def run_conv_twins(conv, kind, geo, kernel_shape, channels, code, dtype, tol, use_bias=True, need_dx=True,
                   seed=0, forward_extra=(), edit_dy=None):
    """``{kind}_forward`` then ``{kind}_backward`` on both devices with the same inputs;
    compares every output. ``conv`` is (cuda device, its kernels, the CPU kernels); ``geo``
    has ``x_shape``, ``rows`` and ``args()``; ``channels`` the output columns;
    ``forward_extra`` goes between the geometry and the scratch (conv's for_backward);
    ``edit_dy(y, dy)`` may change dy once the CPU forward has run. Outputs and scratch
    start as NaN on the device: a kernel that reads what it did not write shows."""
    dev, kc, kh = conv
    r = np.random.default_rng(seed)
    x = r.standard_normal(geo.x_shape).astype(dtype)
    k2 = r.standard_normal(kernel_shape).astype(dtype)
    bias = r.standard_normal(channels).astype(dtype) if use_bias else np.zeros(channels, dtype)
    dy = r.standard_normal((geo.rows, channels)).astype(dtype)
    keep = code in codes.NEEDS_PREACTIVATION
    shape = (geo.rows, channels)
    forward, backward = getattr(kh, f"{kind}_forward"), getattr(kh, f"{kind}_backward")
    forward_d, backward_d = getattr(kc, f"{kind}_forward"), getattr(kc, f"{kind}_backward")

    y, pre = np.empty(shape, dtype), np.empty(shape, dtype)
    cpu_scratch = Scratch(np.empty)
    forward(x, k2, bias, code, keep, *geo.args(), *forward_extra, cpu_scratch, pre if keep else y, y)
    if edit_dy is not None:
        edit_dy(y, dy)
    x_d, k2_d = dev.asarray(x), dev.asarray(k2)
    y_d = dev.full(shape, np.nan, dtype)
    pre_d = dev.full(shape, np.nan, dtype) if keep else y_d
    scratch = Scratch(lambda s, dt: dev.full(s, np.nan, dt))
    forward_d(x_d, k2_d, dev.asarray(bias), code, keep, *geo.args(), *forward_extra, scratch, pre_d, y_d)
    assert_twins_close(dev.to_host(y_d), y, f"{kind}_forward out", tol)
    if keep:
        assert_twins_close(dev.to_host(pre_d), pre, f"{kind}_forward pre", tol)

    dk, db = np.empty(k2.shape, dtype), np.empty(channels, dtype) if use_bias else None
    dx = np.empty(geo.x_shape, dtype) if need_dx else None
    backward(x, k2, pre if keep else y, y, dy, code, *geo.args(), cpu_scratch, dk, db, dx)
    dk_d = dev.full(dk.shape, np.nan, dtype)
    db_d = dev.full(channels, np.nan, dtype) if use_bias else None
    dx_d = dev.full(geo.x_shape, np.nan, dtype) if need_dx else None
    dy_d = dev.asarray(dy)
    backward_d(x_d, k2_d, pre_d, y_d, dy_d, code, *geo.args(), scratch, dk_d, db_d, dx_d)
    assert_twins_close(dev.to_host(dk_d), dk, f"{kind}_backward dkernel", tol)
    if use_bias:
        assert_twins_close(dev.to_host(db_d), db, f"{kind}_backward dbias", tol)
    if need_dx:
        assert_twins_close(dev.to_host(dx_d), dx, f"{kind}_backward dx", tol)
    assert_twins_close(dev.to_host(dy_d), dy, "dy unchanged", tol, equal_nan=True)
