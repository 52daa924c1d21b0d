"""Attention layers: MultiHeadAttention, TransformerEncoder, PositionalEmbedding.

Kernels: nbmodel/kernels/cpu/attention.py (LayerNormalization's in norm.py).
"""
from __future__ import annotations

import math
from collections.abc import MutableMapping

import numpy as np

from .. import activations as act_codes
from .base import Layer, finite_checks, keeps_backward_cache
from .core import Dense, Dropout
from .embedding import padding_mask
from .normalization import LayerNormalization

__all__ = ["MultiHeadAttention", "TransformerEncoder", "PositionalEmbedding"]


def _pos_int(layer, value, what):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{layer}: {what} must be a positive integer, got {value!r}")
    return int(value)


def _is_shape(s):
    return isinstance(s, (tuple, list)) and all(v is None or isinstance(v, (int, np.integer)) for v in s)


class MultiHeadAttention(Layer):
    """Multi-head attention (Keras 3 semantics).

    ``forward((query, value[, key]), training, attention_mask=None,
    use_causal_mask=False, return_attention_scores=False)``; the key defaults
    to the value. ``attention_mask`` is boolean (True = attend), broadcastable
    to (batch, heads, q_len, k_len); a 3-D mask is (batch, q_len, k_len) like
    Keras. A query row with nothing to attend to gets zero attention weights.
    ``backward(dy)`` returns one gradient per input given; ``dy`` may be
    ``(d_output, d_scores)`` when the scores were returned.

    Inputs of rank > 3, (batch, a_1, ..., a_n, features): attention runs over
    ``attention_axes`` (default: every axis but batch and features, jointly)
    and the other axes act as batch axes (Keras); the layer moves them next to
    the batch (the reshaping family's ``permute``) and flattens both groups.
    Masks and returned scores need rank-3 inputs. The inputs' Keras masks
    (``mask=[query_mask, value_mask, key_mask]``, passed by the graph) are ANDed
    into the attention mask (query rows by value and key columns), as Keras 3.

    Params (Keras ``get_weights`` order): query_kernel (dq, h, key_dim),
    query_bias (h, key_dim), key_kernel (dk, h, key_dim), key_bias,
    value_kernel (dv, h, value_dim), value_bias (h, value_dim),
    output_kernel (h, value_dim, *output_shape), output_bias (output_shape).
    """

    supports_masking = True  # the inputs' Keras masks become an attention mask (see _input_masks)
    # Keras: kernel_regularizer / kernel_constraint govern the four kernels, bias_* the four biases
    weight_options = {"kernel": ("query_kernel", "key_kernel", "value_kernel", "output_kernel"),
                      "bias": ("query_bias", "key_bias", "value_bias", "output_bias")}

    def __init__(self, num_heads, key_dim, value_dim=None, dropout=0.0, use_bias=True, output_shape=None,
                 attention_axes=None, kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if attention_axes is not None:
            axes = (attention_axes,) if isinstance(attention_axes, (int, np.integer)) else tuple(attention_axes)
            if not axes or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes):
                raise ValueError(f"{self.name}: attention_axes must be an int or a tuple of ints, got "
                                 f"{attention_axes!r}")
            attention_axes = tuple(int(a) for a in axes)
        self.attention_axes = attention_axes
        self._perm = None  # rank > 3: how inputs are laid out as (batch', time', features) for the kernels
        self.num_heads = _pos_int(self.name, num_heads, "num_heads")
        self.key_dim = _pos_int(self.name, key_dim, "key_dim")
        self.value_dim = self.key_dim if value_dim is None else _pos_int(self.name, value_dim, "value_dim")
        self._value_dim_arg = value_dim
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"{self.name}: dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.use_bias = bool(use_bias)
        if output_shape is None:
            self._output_shape_arg = None
        elif isinstance(output_shape, (int, np.integer)):
            self._output_shape_arg = (_pos_int(self.name, output_shape, "output_shape"),)
        else:
            self._output_shape_arg = tuple(_pos_int(self.name, v, "output_shape") for v in output_shape)
            if not self._output_shape_arg:
                raise ValueError(f"{self.name}: output_shape must not be empty")
        self.output_shape_arg = output_shape
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self._symbolic_scores = False
        self._cache = None
        # Set by a composite owner (TransformerEncoder) that passes the same array as query and
        # value and only needs the SUM of their gradients: Q, K and V then come from one GEMM and
        # backward returns (d_input_total, None).
        self._fuse_self = False

    # ---------------------------------------------------------------- shapes
    def _split_shapes(self, input_shape):
        if (isinstance(input_shape, (tuple, list)) and len(input_shape) in (2, 3)
                and all(_is_shape(s) for s in input_shape)):
            shapes = [tuple(s) for s in input_shape]
        else:
            raise ValueError(f"{self.name}: expected the shapes (query_shape, value_shape[, key_shape]), "
                             f"got {input_shape}")
        q, v = shapes[0], shapes[1]
        k = shapes[2] if len(shapes) == 3 else v
        for what, s in (("query", q), ("value", v), ("key", k)):
            if len(s) != len(q) or len(s) < 3 or s[-1] is None:
                raise ValueError(f"{self.name}: expected {what} of shape (batch, time..., features) with known "
                                 f"features and the query's rank {len(q)}, got {s}")
        if len(q) > 3:
            return q, v, k
        if v[1] is not None and k[1] is not None and v[1] != k[1]:
            raise ValueError(f"{self.name}: key and value must have the same length, got {k} and {v}")
        return q, v, k

    def _layout(self, rank):
        """(batch axes after the first, attention axes) of inputs of ``rank``, from attention_axes."""
        middle = list(range(1, rank - 1))
        if self.attention_axes is None:
            return [], middle
        attn = []
        for a in self.attention_axes:
            ax = a + rank if a < 0 else a
            if ax not in middle or ax in attn:
                raise ValueError(f"{self.name}: attention_axes {self.attention_axes} must name distinct axes "
                                 f"between the batch and the features of rank-{rank} inputs")
            attn.append(ax)
        attn.sort()
        return [a for a in middle if a not in attn], attn

    def build(self, input_shape):
        q, v, k = self._split_shapes(input_shape)
        h, kd, vd = self.num_heads, self.key_dim, self.value_dim
        self._dq, self._dv, self._dk = int(q[-1]), int(v[-1]), int(k[-1])
        rank = len(q)
        others, attn = self._layout(rank)
        if rank == 3 and others:
            raise ValueError(f"{self.name}: attention_axes {self.attention_axes} leaves no axis to attend over")
        self._perm = (0, *others, *attn, rank - 1) if rank > 3 else None
        self._groups = (len(others), len(attn))
        self._out_tail = self._output_shape_arg or (self._dq,)
        ki, bi = self.kernel_initializer, self.bias_initializer
        self.add_param("query_kernel", (self._dq, h, kd), ki)
        if self.use_bias:
            self.add_param("query_bias", (h, kd), bi)
        self.add_param("key_kernel", (self._dk, h, kd), ki)
        if self.use_bias:
            self.add_param("key_bias", (h, kd), bi)
        self.add_param("value_kernel", (self._dv, h, vd), ki)
        if self.use_bias:
            self.add_param("value_bias", (h, vd), bi)
        self.add_param("output_kernel", (h, vd) + self._out_tail, ki)
        if self.use_bias:
            self.add_param("output_bias", self._out_tail, bi)
        super().build(tuple(input_shape))

    def compute_output_shape(self, input_shape):
        q, v, k = self._split_shapes(input_shape)
        tail = self._output_shape_arg or (q[-1],)
        out = tuple(q[:-1]) + tuple(tail)
        if self._symbolic_scores:
            return [out, (q[0], self.num_heads, q[1], v[1])]
        return out

    def __call__(self, *args, **kwargs):
        # Keras call(query, value, key=None, ...): fold value=/key= keywords into the inputs
        args = list(args)
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = list(args[0])
        for name in ("value", "key"):
            if kwargs.get(name) is not None:
                args.append(kwargs.pop(name))
            else:
                kwargs.pop(name, None)
        if len(args) < 2:
            raise ValueError(f"{self.name}: expected query and value (and optionally key)")
        self._symbolic_scores = bool(kwargs.get("return_attention_scores", False))
        try:
            return super().__call__(tuple(args), **kwargs)
        finally:
            self._symbolic_scores = False

    # ----------------------------------------------------------------- masks
    def _mask_array(self, mask, b, tq, tk):
        m = self.device.to_host(mask) if self.device.is_array(mask) else np.asarray(mask)  # masks are built on the host
        if m.dtype.kind not in "biuf":
            raise TypeError(f"{self.name}: attention_mask must be boolean or numeric, got dtype {m.dtype}")
        if m.ndim == 3:  # Keras: (batch, q_len, k_len), broadcast over heads
            m = m[:, None]
        elif m.ndim == 2:
            m = m[None, None]
        elif m.ndim != 4:
            raise ValueError(f"{self.name}: attention_mask must be broadcastable to (batch, heads, q_len, "
                             f"k_len) = {(b, self.num_heads, tq, tk)}, got shape {np.shape(mask)}")
        target = (b, self.num_heads, tq, tk)
        if any(s not in (1, t) for s, t in zip(m.shape, target)):
            raise ValueError(f"{self.name}: attention_mask of shape {np.shape(mask)} is not broadcastable "
                             f"to (batch, heads, q_len, k_len) = {target}")
        full = (m.shape[0], m.shape[1], tq, tk)
        return np.ascontiguousarray(np.broadcast_to(m != 0, full))

    def _input_masks(self, inputs, masks, attention_mask):
        """Keras 3: the inputs' masks (query, value[, key]: (batch, time) each, or None) as an
        attention mask, query rows by value columns (and key columns), ANDed with ``attention_mask``."""
        b = np.shape(inputs[0])[0]
        tq, tk = np.shape(inputs[0])[1], np.shape(inputs[1])[1]
        auto = np.ones((b, tq, tk), bool)
        for i, (m, what) in enumerate(zip(masks, ("query", "value", "key"))):
            if m is None:
                continue
            m = np.asarray(self.device.to_host(m) if self.device.is_array(m) else m)
            want = (b, tq if i == 0 else tk)
            if m.shape != want:
                raise ValueError(f"{self.name}: the {what} mask must have shape {want}, got {m.shape}")
            auto &= (m != 0)[:, :, None] if i == 0 else (m != 0)[:, None, :]
        if attention_mask is None:
            return auto
        return self._mask_array(attention_mask, b, tq, tk) & auto[:, None]

    def compute_mask(self, inputs, mask=None):
        """Keras 3: the output carries the query's mask (and the scores none)."""
        return mask[0] if isinstance(mask, (list, tuple)) else None

    # --------------------------------------------------------------- forward
    def _inputs(self, inputs, key):
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
            raise ValueError(f"{self.name}: expected inputs (query, value[, key]), got "
                             f"{type(inputs).__name__}")
        inputs = list(inputs)
        if key is not None:
            if len(inputs) == 3:
                raise ValueError(f"{self.name}: key given twice")
            inputs.append(key)
        return inputs

    def forward(self, inputs, training=False, attention_mask=None, use_causal_mask=False,
                return_attention_scores=False, key=None, mask=None):
        inputs = self._inputs(inputs, key)
        self.ensure_built(tuple(np.shape(a) for a in inputs))
        has_masks = mask is not None and any(m is not None for m in mask)
        if self._perm is None:
            if has_masks:
                attention_mask = self._input_masks(inputs, list(mask), attention_mask)
            return self._forward3(inputs, training, attention_mask, use_causal_mask, return_attention_scores)
        if attention_mask is not None or has_masks or use_causal_mask or return_attention_scores:
            raise ValueError(f"{self.name}: attention_mask, input masks, use_causal_mask and "
                             f"return_attention_scores need inputs of rank 3 (got rank {len(self._perm)})")
        inputs = [self.check_input(a, ndim=len(self._perm), what=w) for a, w in zip(inputs, ("query", "value", "key"))]
        batch_axes = self._perm[:1 + self._groups[0]]
        q = inputs[0]
        for a, what in zip(inputs[1:], ("value", "key")):
            if tuple(a.shape[ax] for ax in batch_axes) != tuple(q.shape[ax] for ax in batch_axes):
                raise ValueError(f"{self.name}: {what} of shape {a.shape} does not match the query {q.shape} on "
                                 f"the batch axes (those outside attention_axes)")
        self._shapes_in = [a.shape for a in inputs]
        y = self._forward3([self._to3(a, f"in{i}") for i, a in enumerate(inputs)], training, None, False, False)
        return self._from3(y, q.shape, "out")

    def _to3(self, x, key):
        """x (batch, a..., features) as (batch * batch axes, attention positions, features)."""
        perm = self._perm
        if perm != tuple(range(len(perm))):
            moved = self.workspace(("perm", key), tuple(x.shape[a] for a in perm))
            self.kernels("reshaping").permute(x, perm, moved)
            x = moved
        nb_, na = self._groups
        lead = math.prod(x.shape[:1 + nb_])
        return x.reshape(lead, math.prod(x.shape[1 + nb_:1 + nb_ + na]), x.shape[-1])

    def _from3(self, y, query_shape, key):
        """The kernels' (batch', time', *tail) back to (batch, a..., *tail), the axis order of an
        input of ``query_shape`` (the query for the output, each input for its gradient)."""
        perm = self._perm
        tail = tuple(y.shape[2:])
        moved_shape = tuple(query_shape[a] for a in perm[:-1]) + tail
        y = y.reshape(moved_shape)
        if perm == tuple(range(len(perm))):
            return y
        r = len(perm) - 1  # the query's axes before its features
        inv = [0] * r
        for i, a in enumerate(perm[:-1]):
            inv[a] = i
        axes = tuple(inv) + tuple(range(r, r + len(tail)))
        out = self.workspace(("unperm", key), tuple(moved_shape[a] for a in axes))
        self.kernels("reshaping").permute(y, axes, out)
        return out

    def _forward3(self, inputs, training, attention_mask, use_causal_mask, return_attention_scores):
        query = self.check_input(inputs[0], ndim=3, last_dim=self._dq, what="query")
        value = self.check_input(inputs[1], ndim=3, last_dim=self._dv, what="value")
        has_key = len(inputs) == 3
        key_ = self.check_input(inputs[2], ndim=3, last_dim=self._dk, what="key") if has_key else value
        b, tq, _ = query.shape
        tk = value.shape[1]
        if value.shape[0] != b or key_.shape[0] != b:
            raise ValueError(f"{self.name}: query, value and key must have the same batch size, got "
                             f"{query.shape}, {value.shape}, {key_.shape}")
        if key_.shape[1] != tk:
            raise ValueError(f"{self.name}: key and value must have the same length, got {key_.shape} "
                             f"and {value.shape}")
        h, kd, vd = self.num_heads, self.key_dim, self.value_dim
        dt = self.dtype.type
        has_mask = attention_mask is not None
        mask = (self.device.asarray(self._mask_array(attention_mask, b, tq, tk)) if has_mask
                else self.constant("nomask", (1, 1, 1, 1), True, np.bool_))
        rate = self.dropout if (training and self.dropout > 0.0) else 0.0
        keep = keeps_backward_cache(training) or bool(return_attention_scores)
        ws = self.workspace
        dout = math.prod(self._out_tail)
        p = self.params
        zero_b = ws("nobias", (1,))
        args = (
            query.reshape(b * tq, self._dq), key_.reshape(b * tk, self._dk), value.reshape(b * tk, self._dv),
            p["query_kernel"].reshape(self._dq, h * kd), p["query_bias"].reshape(-1) if self.use_bias else zero_b,
            p["key_kernel"].reshape(self._dk, h * kd), p["key_bias"].reshape(-1) if self.use_bias else zero_b,
            p["value_kernel"].reshape(self._dv, h * vd), p["value_bias"].reshape(-1) if self.use_bias else zero_b,
            p["output_kernel"].reshape(h * vd, dout), p["output_bias"].reshape(-1) if self.use_bias else zero_b,
        )
        u = ws("u", (b, h, tq, tk)) if rate > 0.0 else ws("nou", (1, 1, 1, 1))
        if rate > 0.0:
            self.device.fill_uniform(self.rng, u)
        qh, kh, vh = ws("qh", (b, h, tq, kd)), ws("kh", (b, h, tk, kd)), ws("vh", (b, h, tk, vd))
        probs = ws("probs", (b, h, tq, tk)) if keep else ws("probs1", (1, 1, tq, tk))
        o2 = ws("o2", (b * tq, h * vd))
        out = ws("out", (b * tq, dout))
        pdrop = ws("pdrop", (tq, tk) if rate > 0.0 else (1, 1))
        otmp = ws("otmp", (tq, vd))
        scale = dt(1.0 / math.sqrt(kd))
        causal = bool(use_causal_mask)
        fused = self._fuse_self and not has_key and inputs[1] is inputs[0] and self._dq == self._dv == self._dk
        wcat = None
        if fused:
            hk = h * kd
            ctot = 2 * hk + h * vd
            wcat = ws("wcat", (self._dq, ctot))
            bcat = ws("bcat", (ctot,))
            ka = self.kernels("array")
            # one (d, 3 blocks) weight: the q, k, v projections as one GEMM
            for i, (w, bias, off) in enumerate(((args[3], args[4], 0), (args[5], args[6], hk),
                                               (args[7], args[8], 2 * hk))):
                ka.copy_block(w.reshape(self._dq, -1, 1), wcat.reshape(self._dq, ctot, 1), off)
                if self.use_bias:
                    ka.copy_block(bias.reshape(1, -1, 1), bcat.reshape(1, ctot, 1), off)
            self.kernels("attention").mha_self_forward(
                args[0], wcat, bcat, args[9], args[10], self.use_bias, scale, b, tq, h, kd, vd, mask, has_mask,
                causal, keep, dt(rate), u, ws("qkv", (b * tq, ctot)), qh, kh, vh, probs, pdrop, otmp, o2,
                out)
        else:
            self.kernels("attention").mha_forward(
                *args, self.use_bias, scale, b, tq, tk, h, kd, vd, mask, has_mask, causal, keep, dt(rate), u,
                ws("qtmp", (b * tq, h * kd)), ws("ktmp", (b * tk, h * kd)), ws("vtmp", (b * tk, h * vd)),
                qh, kh, vh, probs, pdrop, otmp, o2, out)
        self._cache = ((args[:3], has_key, b, tq, tk, rate, u, qh, kh, vh, probs, o2, wcat)
                       if keeps_backward_cache(training) else None)
        y = out.reshape((b, tq) + self._out_tail)
        if return_attention_scores:
            return y, probs
        return y

    # -------------------------------------------------------------- backward
    def backward(self, dy):
        if self._perm is None:
            return self._backward3(dy)
        dy = self.asarray(dy)
        r = len(self._perm) - 1
        axes = self._perm[:-1] + tuple(range(r, dy.ndim))  # dy is (batch, a..., *tail)
        moved = dy
        if axes != tuple(range(dy.ndim)):
            moved = self.workspace("perm_dy", tuple(dy.shape[a] for a in axes))
            self.kernels("reshaping").permute(dy, axes, moved)
        lead = math.prod(moved.shape[:1 + self._groups[0]])
        grads = self._backward3(moved.reshape((lead, -1) + tuple(dy.shape[r:])))
        if grads is None:
            return None
        return tuple(self._from3(g, shape, f"d{i}") for i, (g, shape) in enumerate(zip(grads, self._shapes_in)))

    def _backward3(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward needs a forward pass with training=True first")
        (q2, k2, v2), has_key, b, tq, tk, rate, u, qh, kh, vh, probs, o2, wcat = self._cache
        dscores = None
        if isinstance(dy, (list, tuple)):
            dy, dscores = dy[0], (dy[1] if len(dy) > 1 else None)
        h, kd, vd = self.num_heads, self.key_dim, self.value_dim
        dout = math.prod(self._out_tail)
        dt = self.dtype.type
        ws = self.workspace
        dy2 = self.asarray(dy).reshape(b * tq, dout)
        has_ds = dscores is not None
        ds = self.asarray(dscores).reshape(b, h, tq, tk) if has_ds else ws("nods", (1, 1, 1, 1))
        need_dx = bool(self.input_grad_needed)
        p, g = self.params, self.grads
        zero_b = ws("nobias", (1,))

        def gb(k):
            return g[k].reshape(-1) if self.use_bias else zero_b

        wo2 = p["output_kernel"].reshape(h * vd, dout)
        dwo2 = g["output_kernel"].reshape(h * vd, dout)  # views: the kernels write the grads through them
        scale = dt(1.0 / math.sqrt(kd))
        common = (ws("do2", (b * tq, h * vd)), ws("dotmp", (tq, vd)), ws("dp", (tq, tk)),
                  ws("pdrop", (tq, tk) if rate > 0.0 else (1, 1)), ws("tvtmp", (tk, vd)), ws("tqtmp", (tq, kd)),
                  ws("tktmp", (tk, kd)))
        if wcat is not None:  # fused self-attention: one input, gradient summed over its three uses
            hk = h * kd
            ctot = wcat.shape[1]
            dwcat, dbcat = ws("dwcat", wcat.shape), ws("dbcat", (ctot,))
            dx = ws("dx_self", (b * tq, self._dq) if need_dx else (1, 1))
            self.kernels("attention").mha_self_backward(
                q2, wcat, wo2, self.use_bias, scale, b, tq, h, kd, vd, dt(rate), u, qh, kh, vh, probs, o2, dy2,
                ds, has_ds, need_dx, *common, ws("gqkv", (b * tq, ctot)), dwcat, dbcat, dwo2, gb("output_bias"), dx)
            d = self._dq
            ka = self.kernels("array")
            for part, off in (("query", 0), ("key", hk), ("value", 2 * hk)):
                ka.take_block(dwcat.reshape(d, ctot, 1), off, g[part + "_kernel"].reshape(d, -1, 1))
                if self.use_bias:
                    ka.take_block(dbcat.reshape(1, ctot, 1), off, g[part + "_bias"].reshape(1, -1, 1))
            return (dx.reshape(b, tq, d), None) if need_dx else None
        dxq = ws("dxq", (b * tq, self._dq) if need_dx else (1, 1))
        dxk = ws("dxk", (b * tk, self._dk) if need_dx else (1, 1))
        dxv = ws("dxv", (b * tk, self._dv) if need_dx else (1, 1))
        self.kernels("attention").mha_backward(
            q2, k2, v2, p["query_kernel"].reshape(self._dq, h * kd), p["key_kernel"].reshape(self._dk, h * kd),
            p["value_kernel"].reshape(self._dv, h * vd), wo2,
            self.use_bias, scale, b, tq, tk, h, kd, vd, dt(rate), u, qh, kh, vh, probs, o2,
            dy2, ds, has_ds, need_dx, *common,
            ws("dq2", (b * tq, h * kd)), ws("dk2", (b * tk, h * kd)), ws("dv2", (b * tk, h * vd)),
            g["query_kernel"].reshape(self._dq, h * kd), gb("query_bias"),
            g["key_kernel"].reshape(self._dk, h * kd), gb("key_bias"),
            g["value_kernel"].reshape(self._dv, h * vd), gb("value_bias"),
            dwo2, gb("output_bias"), dxq, dxk, dxv)
        if not need_dx:
            return None
        dq = dxq.reshape(b, tq, self._dq)
        if has_key:
            return dq, dxv.reshape(b, tk, self._dv), dxk.reshape(b, tk, self._dk)
        dv = ws("dv_total", (b * tk, self._dv))
        self.kernels("array").add(dxv, dxk, dv)
        return dq, dv.reshape(b, tk, self._dv)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(num_heads=self.num_heads, key_dim=self.key_dim, value_dim=self._value_dim_arg,
                   dropout=self.dropout, use_bias=self.use_bias,
                   attention_axes=None if self.attention_axes is None else list(self.attention_axes),
                   output_shape=(list(self._output_shape_arg) if self._output_shape_arg else None),
                   kernel_initializer=_init_name(self, self.kernel_initializer),
                   bias_initializer=_init_name(self, self.bias_initializer))
        return cfg


def _init_name(layer, init):
    if isinstance(init, str):
        return init
    raise ValueError(f"{layer.name}: only initializers given by name can be saved with the model")


class _SublayerDict(MutableMapping):
    """Live view of the sub-layers' params/grads/state under prefixed names.

    Reading ``d["attention/query_kernel"]`` returns the sub-layer's own array
    (the same object); assigning rebinds it in the sub-layer's dict, so a
    model that replaces arrays with views into its flat buffers reaches the
    arrays the sub-layers compute with.
    """

    def __init__(self, owner, attr):
        self._owner = owner
        self._attr = attr

    def _locate(self, key):
        prefix, sep, rest = str(key).partition("/")
        sub = self._owner._subs.get(prefix) if sep else None
        d = getattr(sub, self._attr) if sub is not None else None
        if d is None or rest not in d:
            raise KeyError(key)
        return d, rest

    def __getitem__(self, key):
        d, rest = self._locate(key)
        return d[rest]

    def __setitem__(self, key, value):
        d, rest = self._locate(key)
        d[rest] = value

    def __delitem__(self, key):
        raise TypeError(f"{self._owner.name}: params of a composite layer cannot be deleted")

    def __iter__(self):
        for prefix, sub in self._owner._subs.items():
            for k in getattr(sub, self._attr):
                yield f"{prefix}/{k}"

    def __len__(self):
        return sum(len(getattr(sub, self._attr)) for sub in self._owner._subs.values())

    def __repr__(self):
        return repr({k: getattr(v, "shape", v) for k, v in self.items()})


def _live(attr):
    def get(self):
        return self.__dict__["_live"][attr]

    def set_(self, value):
        # Layer.__init__ assigns {}; anything else is written through to the sub-layers
        for k, v in dict(value).items():
            self.__dict__["_live"][attr][k] = v

    return property(get, set_)


class TransformerEncoder(Layer):
    """One transformer encoder block over (batch, time, features) -> same shape.

    Post-norm (default): ``h = LN1(x + Dropout(MHA(x, x)))``,
    ``y = LN2(h + Dropout(Dense2(Dense1(h))))``. Pre-norm (``norm_first``):
    ``h = x + Dropout(MHA(LN1(x)))``, ``y = h + Dropout(Dense2(Dense1(LN2(h))))``.
    Dense1 has ``ff_dim`` units and ``activation``; Dense2 projects back to the
    input width. The attention has ``num_heads`` heads of ``key_dim`` and the
    same dropout. ``layer_norm_epsilon`` defaults to 1e-5 (transformer practice).

    Params: the sub-layers' under prefixed names, in this order:
    ``attention/*`` (MultiHeadAttention), ``norm1/gamma``, ``norm1/beta``,
    ``norm2/gamma``, ``norm2/beta``, ``dense1/kernel``, ``dense1/bias``,
    ``dense2/kernel``, ``dense2/bias``. ``params``/``grads`` are live views of
    the sub-layers' dicts; ``bind_param`` forwards to the owning sub-layer.
    """

    supports_masking = True  # a padding mask hides padded keys; the output keeps the input's mask

    def __init__(self, num_heads, key_dim, ff_dim, dropout=0.0, activation="relu", norm_first=False,
                 use_causal_mask=False, layer_norm_epsilon=1e-5, **kwargs):
        self.__dict__["_live"] = {a: _SublayerDict(self, a) for a in ("params", "grads", "state")}
        self._subs = {}
        super().__init__(**kwargs)
        self.num_heads = _pos_int(self.name, num_heads, "num_heads")
        self.key_dim = _pos_int(self.name, key_dim, "key_dim")
        self.ff_dim = _pos_int(self.name, ff_dim, "ff_dim")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"{self.name}: dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        act_codes.get(activation, self.name)
        self.activation = activation
        self.norm_first = bool(norm_first)
        self.use_causal_mask = bool(use_causal_mask)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        dt = self.dtype.name

        def seed():
            return int(self.rng.integers(2 ** 62))

        n = self.name
        self.attention = MultiHeadAttention(self.num_heads, self.key_dim, dropout=self.dropout,
                                            name=f"{n}/attention", dtype=dt, seed=seed())
        self.attention._fuse_self = True  # self-attention: one QKV GEMM, summed input gradient
        self.norm1 = LayerNormalization(epsilon=self.layer_norm_epsilon, name=f"{n}/norm1", dtype=dt, seed=seed())
        self.norm2 = LayerNormalization(epsilon=self.layer_norm_epsilon, name=f"{n}/norm2", dtype=dt, seed=seed())
        self.dense1 = Dense(self.ff_dim, activation=activation, name=f"{n}/dense1", dtype=dt, seed=seed())
        self.dense2 = None  # its width is the input's: created in build
        self.drop1 = Dropout(self.dropout, name=f"{n}/dropout1", dtype=dt, seed=seed())
        self.drop2 = Dropout(self.dropout, name=f"{n}/dropout2", dtype=dt, seed=seed())
        self._dense2_seed = seed()
        self._subs = {"attention": self.attention, "norm1": self.norm1, "norm2": self.norm2,
                      "dense1": self.dense1}

    params = _live("params")
    grads = _live("grads")
    state = _live("state")

    def sublayers(self):
        return [s for s in (self.attention, self.norm1, self.norm2, self.dense1, self.dense2,
                            self.drop1, self.drop2) if s is not None]

    def bind_param(self, name, param, grad):
        prefix, _, rest = name.partition("/")
        sub = self._subs.get(prefix)
        if sub is None or rest not in sub.params:
            raise KeyError(f"{self.name}: no param {name!r}")
        sub.bind_param(rest, param, grad)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"{self.name}: expected input of shape (batch, time, features) with known "
                             f"features, got {input_shape}")
        d = int(input_shape[-1])
        self._d = d
        self.dense2 = Dense(d, name=f"{self.name}/dense2", dtype=self.dtype.name, seed=self._dense2_seed)
        self._subs["dense2"] = self.dense2
        self.attention.build((input_shape, input_shape))
        self.norm1.build(input_shape)
        self.norm2.build(input_shape)
        self.dense1.build(input_shape)
        self.dense2.build(input_shape[:2] + (self.ff_dim,))
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x, training=False, attention_mask=None, mask=None):
        self.ensure_built(np.shape(x))
        x = self.check_input(x, ndim=3, last_dim=self._d)
        if mask is not None:  # the padding mask hides padded keys (queries keep their rows, as keras_hub)
            attention_mask = self.attention._input_masks((x, x), [None, mask], attention_mask)
        training = bool(training)
        shape = x.shape
        n, d, ff = shape[0] * shape[1], self._d, self.ff_dim
        x2 = x.reshape(n, d)
        ws = self.workspace
        k, kn, ka = self.kernels("attention"), self.kernels("norm"), self.kernels("array")
        eps = self.dtype.type(self.layer_norm_epsilon)
        code = act_codes.get(self.activation, self.name)
        keep_pre = code in act_codes.NEEDS_PREACTIVATION
        p1, p2 = self.dense1.params, self.dense2.params
        g1, be1 = self.norm1.params["gamma"], self.norm1.params["beta"]
        g2, be2 = self.norm2.params["gamma"], self.norm2.params["beta"]
        mean1, rstd1, mean2, rstd2 = ws("mean1", (n,)), ws("rstd1", (n,)), ws("mean2", (n,)), ws("rstd2", (n,))
        hid = ws("hid", (n, ff))
        pre = ws("pre", (n, ff)) if keep_pre else hid
        f = ws("f", (n, d))
        y = ws("y", (n, d))
        causal = self.use_causal_mask
        with finite_checks(False):  # sub-layer inputs come from x, already checked
            if self.norm_first:
                n1 = ws("n1", (n, d))
                kn.layer_norm_forward(x2, g1, be1, eps, True, True, n1, mean1, rstd1)
                n13 = n1.reshape(shape)
                a = self.attention.forward((n13, n13), training, attention_mask=attention_mask,
                                           use_causal_mask=causal)
                a = self.drop1.forward(a, training)
                h1 = ws("h1", (n, d))
                ka.add(x2, self.asarray(a).reshape(n, d), h1)
                n2 = ws("n2", (n, d))
                kn.layer_norm_forward(h1, g2, be2, eps, True, True, n2, mean2, rstd2)
                k.ffn_forward(n2, p1["kernel"], p1["bias"], p2["kernel"], p2["bias"], code, keep_pre, pre, hid, f)
                fo = self.drop2.forward(f, training)
                ka.add(h1, self.asarray(fo).reshape(n, d), y)
                self._cache = (x2, n1, h1, n2, pre, hid, mean1, rstd1, mean2, rstd2, code, shape)
            else:
                a = self.attention.forward((x, x), training, attention_mask=attention_mask,
                                           use_causal_mask=causal)
                a = self.asarray(self.drop1.forward(a, training)).reshape(n, d)
                s1, h1 = ws("s1", (n, d)), ws("h1", (n, d))
                kn.add_layer_norm_forward(x2, a, g1, be1, eps, s1, h1, mean1, rstd1)
                k.ffn_forward(h1, p1["kernel"], p1["bias"], p2["kernel"], p2["bias"], code, keep_pre, pre, hid, f)
                fo = self.asarray(self.drop2.forward(f, training)).reshape(n, d)
                s2 = ws("s2", (n, d))
                kn.add_layer_norm_forward(h1, fo, g2, be2, eps, s2, y, mean2, rstd2)
                self._cache = (x2, s1, h1, s2, pre, hid, mean1, rstd1, mean2, rstd2, code, shape)
        return y.reshape(shape)

    def backward(self, dy):
        x2, s1, h1, s2, pre, hid, mean1, rstd1, mean2, rstd2, code, shape = self._cache
        n, d = x2.shape
        dy = self.asarray(dy).reshape(n, d)
        need_dx = bool(self.input_grad_needed)
        ws = self.workspace
        k, kn, ka = self.kernels("attention"), self.kernels("norm"), self.kernels("array")
        p1, p2 = self.dense1.params, self.dense2.params
        gd1, gd2 = self.dense1.grads, self.dense2.grads
        gn1, gn2 = self.norm1.grads, self.norm2.grads
        g1, g2 = self.norm1.params["gamma"], self.norm2.params["gamma"]
        dz = ws("dz", hid.shape)
        dffin = ws("dffin", (n, d))
        if self.norm_first:
            n2 = s2
            df = self.asarray(self.drop2.backward(dy)).reshape(n, d)
            k.ffn_backward(n2, p1["kernel"], p2["kernel"], pre, hid, df, code, True, dz, gd1["kernel"],
                           gd1["bias"], gd2["kernel"], gd2["bias"], dffin)
            dln = ws("dln", (n, d))
            kn.layer_norm_backward(h1, g2, mean2, rstd2, dffin, True, True, dln, gn2["gamma"], gn2["beta"])
            dh1 = ws("dh1", (n, d))
            ka.add(dy, dln, dh1)
            da = self.asarray(self.drop1.backward(dh1.reshape(shape)))
            self.attention.input_grad_needed = True
            dq, dv = self.attention.backward(da)
            if dv is None:  # fused self-attention already summed the three input gradients
                dn1 = self.asarray(dq).reshape(n, d)
            else:
                dn1 = ws("dn1", (n, d))
                ka.add(dq.reshape(n, d), dv.reshape(n, d), dn1)
            kn.layer_norm_backward(x2, g1, mean1, rstd1, dn1, True, True, dln, gn1["gamma"], gn1["beta"])
            if not need_dx:
                return None
            dx = ws("dx", (n, d))
            ka.add(dh1, dln, dx)
            return dx.reshape(shape)
        ds2 = ws("ds2", (n, d))
        kn.layer_norm_backward(s2, g2, mean2, rstd2, dy, True, True, ds2, gn2["gamma"], gn2["beta"])
        df = self.asarray(self.drop2.backward(ds2)).reshape(n, d)
        k.ffn_backward(h1, p1["kernel"], p2["kernel"], pre, hid, df, code, True, dz, gd1["kernel"],
                       gd1["bias"], gd2["kernel"], gd2["bias"], dffin)
        ds1 = ws("ds1", (n, d))
        kn.layer_norm_backward_sum(s1, g1, mean1, rstd1, dffin, ds2, ds1, gn1["gamma"], gn1["beta"])
        self.attention.input_grad_needed = need_dx
        grads = self.attention.backward(self.asarray(self.drop1.backward(ds1.reshape(shape))))
        if not need_dx:
            return None
        dq, dv = grads
        dx = ws("dx", (n, d))
        ka.add(ds1, dq.reshape(n, d), dx)
        if dv is not None:
            ka.add_into(dx, dv.reshape(n, d))
        return dx.reshape(shape)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(num_heads=self.num_heads, key_dim=self.key_dim, ff_dim=self.ff_dim, dropout=self.dropout,
                   activation=self.activation, norm_first=self.norm_first,
                   use_causal_mask=self.use_causal_mask, layer_norm_epsilon=self.layer_norm_epsilon)
        return cfg


class PositionalEmbedding(Layer):
    """Token embeddings plus learned position embeddings.

    Input: integer token ids (batch, time) with time <= sequence_length.
    Output: (batch, time, output_dim) = token_embeddings[ids] + position_embeddings[:time].
    Params: token_embeddings (input_dim, output_dim), position_embeddings
    (sequence_length, output_dim).
    """

    def __init__(self, sequence_length, input_dim, output_dim, embeddings_initializer="random_uniform",
                 position_initializer="glorot_uniform", mask_zero=False, **kwargs):
        super().__init__(**kwargs)
        self.mask_zero = bool(mask_zero)  # id 0 is padding: the output carries a Keras mask
        self.sequence_length = _pos_int(self.name, sequence_length, "sequence_length")
        self.input_dim = _pos_int(self.name, input_dim, "input_dim")
        self.output_dim = _pos_int(self.name, output_dim, "output_dim")
        self.embeddings_initializer = embeddings_initializer
        self.position_initializer = position_initializer

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 2:
            raise ValueError(f"{self.name}: expected token ids of shape (batch, time), got {input_shape}")
        if input_shape[1] is not None and input_shape[1] > self.sequence_length:
            raise ValueError(f"{self.name}: sequences of length {input_shape[1]} exceed sequence_length "
                             f"{self.sequence_length}")
        self.add_param("token_embeddings", (self.input_dim, self.output_dim), self.embeddings_initializer)
        self.add_param("position_embeddings", (self.sequence_length, self.output_dim),
                       self.position_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def _ids(self, x):
        # ids are checked on the host: a bad id would otherwise read outside the table
        a = self.device.to_host(x) if self.device.is_array(x) else np.asarray(x)
        if a.dtype.kind not in "iuf" or a.dtype.kind == "b":
            raise TypeError(f"{self.name}: expected integer token ids, got dtype {a.dtype}")
        if a.ndim != 2:
            raise ValueError(f"{self.name}: expected token ids of rank 2 (batch, time), got shape {a.shape}")
        if a.shape[1] > self.sequence_length:
            raise ValueError(f"{self.name}: sequences of length {a.shape[1]} exceed sequence_length "
                             f"{self.sequence_length}")
        if a.dtype.kind == "f":
            if not np.isfinite(a).all() or (a != np.round(a)).any():
                raise ValueError(f"{self.name}: token ids must be whole numbers")
        if a.size and (a.min() < 0 or a.max() >= self.input_dim):
            raise ValueError(f"{self.name}: token ids must be in [0, {self.input_dim}), got values in "
                             f"[{a.min()}, {a.max()}]")
        return self.device.asarray(a, np.int64)

    def integer_input(self, index: int = 0) -> bool:
        return True

    def creates_mask(self) -> bool:
        return self.mask_zero

    def compute_mask(self, inputs, mask=None):
        """With ``mask_zero``: True where the id is not 0 (Keras), else no mask."""
        return padding_mask(self.device, inputs) if self.mask_zero else None

    def forward(self, x, training=False):
        self.ensure_built(np.shape(x))
        ids = self._ids(x)
        out = self.workspace("y", ids.shape + (self.output_dim,))
        self.kernels("attention").pos_embed_forward(ids, self.params["token_embeddings"],
                                                    self.params["position_embeddings"], out)
        self._ids_cache = ids
        return out

    def backward(self, dy):
        ids = self._ids_cache
        dy = self.asarray(dy).reshape(ids.shape + (self.output_dim,))
        self.kernels("attention").pos_embed_backward(ids, dy, self.grads["token_embeddings"],
                                                     self.grads["position_embeddings"])
        return None  # integer inputs have no gradient

    def get_config(self):
        cfg = super().get_config()
        cfg.update(sequence_length=self.sequence_length, input_dim=self.input_dim, output_dim=self.output_dim,
                   embeddings_initializer=_init_name(self, self.embeddings_initializer),
                   position_initializer=_init_name(self, self.position_initializer), mask_zero=self.mask_zero)
        return cfg
