"""The kernel contract: what every device's kernel package provides.

A device's kernel package (``nbmodel.kernels.cpu``, later ``.cuda``) has one
module per family below, and each module defines every launch function of
its family with exactly these parameter names. Layers, losses, metrics,
optimizers and the model call nothing else, so a device that implements the
contract runs every layer unchanged. ``tests/test_contract.py`` checks each
registered device's package against this table and fails by name for a
missing twin.

Conventions shared by every launch function:

- Arrays are C-contiguous arrays of the device, float32 or float64 (all of
  one dtype within a call) unless named otherwise (ids, labels, ``arg``:
  integer; masks: bool). Outputs are preallocated by the caller and written
  in place; nothing is returned unless the entry says so.
- Geometry comes as plain ints (kernel and stride sizes, padding before the
  first element, output sizes); flags as bools; activation and loss codes are
  the ints of ``nbmodel/kernels/codes.py``.
- No thread counts, chunk sizes or block sizes: scheduling is the device
  package's business. Where a launcher needs scratch memory of a size only it
  knows, it takes ``scratch``: a callable ``scratch(key, shape, dtype=None)``
  that returns an uninitialized array on the device, the same one for the
  same key, shape and dtype on later calls (the layer's workspace), so a
  forward launcher can leave for the backward launcher what it needs.
- A value "returned to the host" is a Python scalar; everything else stays on
  the device.

``REFERENCE`` names, per family, the float64 NumPy oracle functions in
``nbmodel/kernels/reference/``: they have the contract's names where they
compute the same thing, written for clarity (returning values instead of
filling outputs).
"""
from __future__ import annotations

# family -> {function name: (parameters, what it computes)}
CONTRACT: dict[str, dict[str, tuple[str, str]]] = {
    "array": {
        "fill": ("out, value", "out[...] = value"),
        "copy": ("src, out", "out[...] = src (same shape)"),
        "add": ("a, b, out", "out = a + b (same shape)"),
        "add_into": ("out, a", "out += a"),
        "multiply": ("a, b, out", "out = a * b"),
        "scale": ("out, factor", "out *= factor (a Python float)"),
        "copy_block": ("src, out, offset", "out[:, offset:offset + src.shape[1], :] = src (3-D)"),
        "take_block": ("src, offset, out", "out = src[:, offset:offset + out.shape[1], :] (3-D)"),
        "move_axis_last": ("src, out", "(p, c, q) -> (p, q, c)"),
        "move_axis_back": ("src, out", "(p, q, c) -> (p, c, q)"),
        "reverse_steps": ("src, out", "out[:, t] = src[:, T - 1 - t]"),
        "total": ("a", "float64 sum of every element, returned to the host"),
        "subtract": ("a, b, out", "out = a - b (same shape)"),
        "extremum_into": ("out, arg, a, index, largest",
                          "where a > out (largest) or a < out (not largest): out = a, arg (int32) = index; "
                          "ties keep the earlier input"),
        "take_where": ("dy, arg, index, dx", "dx = dy where arg == index, else 0"),
        "batch_matmul": ("a, b, ta, tb, out", "out[p] = op(a[p]) @ op(b[p]) for 3-D a, b, out; op transposes "
                                              "when ta / tb"),
        "l2_normalize": ("x, eps, out, inv", "out = x * inv over axis 1 of x (p, m, q), "
                                             "inv (p, q) = min(1 / sqrt(sum x**2), 1 / eps)"),
        "l2_normalize_backward": ("y, inv, dy, eps, dx", "gradient of l2_normalize given its out y and inv"),
    },
    "reshaping": {
        "repeat_rows": ("src, out", "out[:, j, :] = src for src (p, q), out (p, m, q)"),
        "sum_rows": ("src, out", "out = src[:, 0, :] + src[:, 1, :] + ... in that order, src (p, m, q), "
                                 "out (p, q)"),
        "resize_linear": ("src, out", "linear upsampling along axis 1 of src (p, m, q) to out (p, m * s, q): "
                                      "half-pixel centres, edges clamped (TF resize, torch align_corners=False)"),
        "resize_linear_backward": ("dy, dx", "the gradient of resize_linear (a gather, fixed order)"),
        "pad_2d": ("src, top, left, out", "out (n, H, W, c) = 0 but out[:, top:top + h, left:left + w] = src "
                                          "(n, h, w, c)"),
        "crop_2d": ("src, top, left, out", "out (n, oh, ow, c) = src[:, top:top + oh, left:left + ow]"),
        "permute": ("src, axes, out", "out = src.transpose(axes) (axes: a tuple of at most 8 ints)"),
    },
    "activations": {
        "activation_forward": ("code, x, out", "out = act(x), elementwise (any code but softmax)"),
        "activation_backward": ("code, z, y, dy, dx", "dx = dy * act'(z) given z and y = act(z)"),
        "softmax_rows": ("x, out", "softmax over the last axis of 2-D x (out may be x)"),
        "softmax_rows_backward": ("y, dy, dx", "dx = y * (dy - sum(dy * y)) per row"),
    },
    "dense": {
        "dense_forward": ("x, kernel, bias, code, pre, out",
                          "pre = x @ kernel + bias; out = act(pre) (pre may be out unless the code needs it)"),
        "dense_backward": ("x, kernel, pre, y, dy, code, need_dx, dz, dkernel, dbias, dx",
                           "dz = dy * act'; dkernel = x.T @ dz; dbias = sum(dz); dx = dz @ kernel.T if need_dx"),
        "dropout_forward": ("x, u, rate, out", "out = x / (1 - rate) where u >= rate, else 0"),
        "dropout_backward": ("dy, u, rate, dx", "the same mask and scale applied to dy"),
    },
    "conv": {
        "conv_forward": ("x, kernel, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, for_backward, "
                         "scratch, pre, out",
                         "2-D convolution of x (n, h, w, c) by kernel (kh*kw*c, filters), bias and activation "
                         "fused; rows of pre/out are (n, oh, ow) positions; for_backward keeps what "
                         "conv_backward needs in scratch"),
        "conv_backward": ("x, kernel, pre, y, dy, code, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, scratch, dkernel, "
                          "dbias, dx",
                          "after conv_forward(for_backward=True): dkernel, dbias (None: no bias) and dx "
                          "(None: not needed) from dy (n*oh*ow, filters)"),
        "conv_transpose_forward": ("x, kernel, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, "
                                   "scratch, pre, out",
                                   "transposed convolution of x (n, h, w, c) by kernel (kh*kw*filters, c): the "
                                   "input gradient of the convolution of out (n*oh*ow rows) with this geometry, "
                                   "which maps (oh, ow) to (h, w); bias and activation fused"),
        "conv_transpose_backward": ("x, kernel, pre, y, dy, code, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, scratch, "
                                    "dkernel, dbias, dx",
                                    "gradients of conv_transpose_forward: dkernel, dbias (None: no bias), dx "
                                    "(None: not needed) from dy (n*oh*ow, filters)"),
        "depthwise_forward": ("x, kernel, bias, code, keep_pre, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, scratch, "
                              "pre, out",
                              "depthwise convolution of x (n, h, w, c) by kernel (kh*kw, c*M) (the Keras "
                              "(kh, kw, c, M) kernel: output channel ch*M + m from input channel ch), bias and "
                              "activation fused; rows of pre/out are (n, oh, ow) positions"),
        "depthwise_backward": ("x, kernel, pre, y, dy, code, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, scratch, "
                               "dkernel, dbias, dx",
                               "gradients of depthwise_forward: dkernel (kh*kw, c*M), dbias (None: no bias), dx "
                               "(None: not needed) from dy (n*oh*ow, c*M)"),
    },
    "pooling": {
        "max_pool_forward": ("x, ph, pw, sh, sw, pt, pl, out, arg",
                             "window maxima of x (n, h, w, c); arg (int32) records each one's position"),
        "max_pool_backward": ("dy, arg, ph, pw, sh, sw, pt, pl, dx",
                              "dx = dy routed to the positions arg recorded (same geometry), 0 elsewhere"),
        "avg_pool_forward": ("x, ph, pw, sh, sw, pt, pl, out", "window means, padding not counted"),
        "avg_pool_backward": ("dy, ph, pw, sh, sw, pt, pl, dx", "dy spread evenly over each window"),
        "global_avg_forward": ("x, part, out", "mean over axis 1 of x (n, steps, c); part: (c,) scratch"),
        "global_avg_backward": ("dy, dx", "dy / steps broadcast over axis 1"),
        "global_max_forward": ("x, out, arg", "max over axis 1 of x (n, steps, c), arg its position"),
        "global_max_backward": ("dy, arg, dx", "dy routed to the recorded positions"),
    },
    "norm": {
        "layer_norm_forward": ("x, gamma, beta, eps, use_scale, use_center, out, mean, rstd",
                               "normalize each row of x (n, d); mean and 1/std per row kept for backward"),
        "layer_norm_backward": ("x, gamma, mean, rstd, dy, use_scale, use_center, dx, dgamma, dbeta",
                                "gradients of layer_norm_forward"),
        "group_norm_forward": ("x, gamma, beta, eps, groups, use_scale, use_center, out, mean, rstd",
                               "x (n, m, c): each sample's channels in ``groups`` consecutive groups, each "
                               "group normalized over its m * c / groups values, then per-channel gamma, "
                               "beta; mean and 1/std (n, groups) kept for backward"),
        "group_norm_backward": ("x, gamma, mean, rstd, dy, groups, use_scale, use_center, dx, dgamma, dbeta",
                                "gradients of group_norm_forward"),
        "add_layer_norm_forward": ("a, b, gamma, beta, eps, s, out, mean, rstd",
                                   "s = a + b, then layer_norm_forward(s) (post-norm residual)"),
        "layer_norm_backward_sum": ("x, gamma, mean, rstd, dya, dyb, dx, dgamma, dbeta",
                                    "layer_norm_backward with dy = dya + dyb"),
        "batch_norm_forward": ("x, gamma, beta, eps, momentum, training, use_scale, use_center, moving_mean, "
                               "moving_var, work, mean, rstd, out",
                               "per-column statistics of x (n, c) (training) or the moving ones, then scale "
                               "and shift; training also updates the moving statistics"),
        "batch_norm_backward": ("x, dy, gamma, mean, rstd, training, use_scale, use_center, work, dx, dgamma, "
                                "dbeta", "gradients of batch_norm_forward"),
        "batch_norm_column_sums": ("x, work, out", "column sums of x (the pieces data parallel sums "
                                                   "over replicas)"),
        "batch_norm_centered_squares": ("x, mean, work, out", "column sums of (x - mean)**2"),
        "batch_norm_update_moving": ("mean, var, eps, momentum, moving_mean, moving_var, rstd",
                                     "moving statistics update; rstd = 1/sqrt(var + eps)"),
        "batch_norm_apply": ("x, gamma, beta, mean, rstd, use_scale, use_center, work, out",
                             "out = (x - mean) * rstd * gamma + beta"),
        "batch_norm_backward_sums": ("x, dy, mean, rstd, work, sdy, sdx", "column sums of dy and dy * xhat"),
        "batch_norm_backward_dx": ("x, dy, gamma, mean, rstd, sdy, sdx, count, training, use_scale, work, dx",
                                   "dx from the (global) sums over count rows"),
    },
    "embedding": {
        "embedding_forward": ("ids, table, out",
                              "out[i] = table[ids[i]]; returns to the host the first bad position or -1"),
        "embedding_backward": ("ids, dy, dtable", "dtable = 0, then dtable[ids[i]] += dy[i] (repeats add)"),
    },
    "recurrent": {
        "simple_rnn_forward": ("x, reverse, kernel, recurrent_kernel, bias, use_init, act, ret_seq, mask_x, n_mx, "
                               "mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, xs, P, H, rec, y",
                               "SimpleRNN over x (batch, T, d); H (T + 1, batch, u) holds every state, "
                               "H[0] the initial one. Dropout (every cell): n_mx input masks mask_x "
                               "(batch, n_mx | 1, d) and n_mh recurrent masks mask_h (batch, n_mh | 1, u), each "
                               "0 (none), 1 (all gates) or n_gates (one per gate block); xs (max(n_mx, 1), T, "
                               "batch, d) the masked time-major inputs; HM (n_mh | 1, T, batch, u) the masked "
                               "previous states. Step masks (every cell, Keras masking): step_mask (batch, T) "
                               "in x's time order, 1 = real step, 0 = skipped (states carried over, output row "
                               "the previous output row, zeros at the first step or with zero_masked), read "
                               "only when has_step_mask (else a (1, 1) dummy)"),
        "simple_rnn_backward": ("xs, reverse, kernel, recurrent_kernel, H, dy, has_seq, act, mask_x, n_mx, mask_h, "
                                "n_mh, HM, step_mask, has_step_mask, zero_masked, use_init, need_dx, "
                                "dh, dZ, dkernel, drecurrent, dbias, dxs, dx",
                                "backward through time; dh holds the last state's gradient in, the initial "
                                "state's out; skipped steps get zero gate gradients and pass the state "
                                "gradients through"),
        "lstm_forward": ("x, reverse, kernel, recurrent_kernel, bias, use_init, act, rec_act, ret_seq, mask_x, n_mx, "
                         "mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, xs, G, H, "
                         "C, TC, rec, y", "LSTM (gates i, f, c, o) over x (batch, T, d)"),
        "lstm_backward": ("xs, reverse, kernel, recurrent_kernel, G, H, C, TC, dy, has_seq, act, rec_act, "
                          "mask_x, n_mx, mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, use_init, need_dx, "
                          "dh, dc, dZ, dkernel, drecurrent, dbias, "
                          "dxs, dx",
                          "backward through time of lstm_forward"),
        "gru_forward": ("x, reverse, kernel, recurrent_kernel, bias, use_init, act, rec_act, reset_after, ret_seq, "
                        "mask_x, n_mx, mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, xs, G, H, RH, rec, "
                        "y",
                        "GRU (gates z, r, h) over x (batch, T, d); bias (2, 3u) with reset_after (Keras 3), "
                        "(1, 3u) without (Keras 2: RH = r * h_{t-1}, the candidate's recurrent product input)"),
        "gru_backward": ("xs, reverse, kernel, recurrent_kernel, G, H, RH, dy, has_seq, act, rec_act, reset_after, "
                         "mask_x, n_mx, "
                         "mask_h, n_mh, HM, step_mask, has_step_mask, zero_masked, use_init, "
                         "need_dx, dh, dhz, dZ, dR, dkernel, drecurrent, dbias, dxs, dx",
                         "backward through time of gru_forward"),
    },
    "attention": {
        "mha_forward": ("q2, k2, v2, wq, bq, wk, bk, wv, bv, wo, bo, use_bias, scale, batch, tq, tk, heads, kd, "
                        "vd, mask, has_mask, causal, keep, rate, u, qtmp, ktmp, vtmp, qh, kh, vh, probs, pdrop, "
                        "otmp, o2, out",
                        "projections, masked softmax(q k^T * scale), dropout, weighted values, output "
                        "projection"),
        "mha_self_forward": ("x2, wcat, bcat, wo, bo, use_bias, scale, batch, t, heads, kd, vd, mask, has_mask, "
                             "causal, keep, rate, u, qkv, qh, kh, vh, probs, pdrop, otmp, o2, out",
                             "mha_forward for query = key = value with the three projections as one GEMM"),
        "mha_backward": ("q2, k2, v2, wq, wk, wv, wo, use_bias, scale, batch, tq, tk, heads, kd, vd, rate, u, "
                         "qh, kh, vh, probs, o2, dout, dscores, has_dscores, need_dx, do2, dotmp, dp, pdrop, "
                         "tvtmp, tqtmp, tktmp, dq2, dk2, dv2, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo, dxq, dxk, "
                         "dxv", "gradients of mha_forward"),
        "mha_self_backward": ("x2, wcat, wo, use_bias, scale, batch, t, heads, kd, vd, rate, u, qh, kh, vh, probs, "
                              "o2, dout, dscores, has_dscores, need_dx, do2, dotmp, dp, pdrop, tvtmp, tqtmp, "
                              "tktmp, g, dwcat, dbcat, dwo, dbo, dx", "gradients of mha_self_forward"),
        "ffn_forward": ("x, w1, b1, w2, b2, code, keep_pre, pre, hid, out",
                        "out = act(x @ w1 + b1) @ w2 + b2 (the Transformer's feed-forward block)"),
        "ffn_backward": ("x, w1, w2, pre, hid, dout, code, need_dx, dz, dw1, db1, dw2, db2, dx",
                         "gradients of ffn_forward"),
        "pos_embed_forward": ("ids, tok, pos, out", "out[b, t] = tok[ids[b, t]] + pos[t]"),
        "pos_embed_backward": ("ids, dy, dtok, dpos", "gradients of pos_embed_forward (repeats add)"),
    },
    "losses": {
        "dense_loss": ("code, y_true, y_pred, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy",
                       "elementwise losses (codes MSE, MAE, HUBER, BCE, BCE_LOGITS) averaged over the last "
                       "axis: one weighted value per row, and d(sum)/d y_pred"),
        "categorical_ce": ("y_true, y_pred, from_logits, a, b, eps, w, w_per, use_w, need_grad, row_loss, dy",
                           "categorical cross-entropy per row (smoothed targets y_true * a + b)"),
        "sparse_ce": ("labels, y_pred, from_logits, ignore, use_ignore, eps, w, w_per, use_w, need_grad, "
                      "row_loss, dy",
                      "sparse categorical cross-entropy per row; returns to the host (rows counted, "
                      "first bad label or 0)"),
        "sparse_matches": ("labels, y_pred, k, out", "1.0 where the label is the argmax (k = 0) or in the top k"),
        "categorical_matches": ("y_true, y_pred, k, out", "the same against one-hot targets"),
    },
    "optim": {
        "sgd_step": ("p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, momentum, nesterov, m",
                     "SGD (momentum, Nesterov) on the flat buffer; segment i of bounds scales g by scales[i]"),
        "adam_step": ("p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, one_m_b2, eps, amsgrad, "
                      "m, v, vhat", "Adam / AdamW"),
        "rmsprop_step": ("p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, momentum, eps, "
                         "centered, vel, mom, avg", "RMSprop (centered, momentum)"),
        "nadam_step": ("p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, one_m_b1, one_m_b2, m_coef, g_coef, "
                       "v_coef, eps, m, v", "Nadam (Keras 3 momentum-cache schedule; coefficients from the caller)"),
        "adagrad_step": ("p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, eps, acc", "Adagrad"),
        "adadelta_step": ("p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, rho, one_m_rho, eps, acc_g, acc_d",
                          "Adadelta"),
        "adamax_step": ("p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, alpha, one_m_b1, beta_2, eps, m, u",
                        "Adamax (infinity norm)"),
        "lion_step": ("p, g, bounds, scales, use_cv, cv, use_wd, wd_lr, lr, beta_1, one_m_b1, beta_2, one_m_b2, m",
                      "Lion (sign update)"),
        "segment_sumsq": ("g, bounds, out", "out[i] = sum of g**2 over segment i, in float64"),
        "l1l2_penalty": ("w, l1, l2", "l1 * sum|w| + l2 * sum w**2 (accumulated in float64), returned to the host"),
        "add_l1l2_grad": ("w, l1, l2, g", "g += l1 * sign(w) + 2 * l2 * w (same shape)"),
        "clip_norms": ("w, lo, hi, rate, eps", "in place, w (p, m, q), n = norms over axis 1: "
                                              "w *= (rate * clip(n, lo, hi) + (1 - rate) * n) / (eps + n)"),
        "non_neg": ("w", "in place: w = 0 where w < 0"),
    },
}

FAMILIES = frozenset(CONTRACT)

# family -> the reference oracle functions (nbmodel/kernels/reference/<family>.py) that check it
REFERENCE: dict[str, tuple[str, ...]] = {
    "array": ("copy_block", "move_axis_last", "reverse_steps"),
    "reshaping": ("repeat_rows", "sum_rows", "resize_linear", "pad_2d", "crop_2d", "permute"),
    "activations": ("activation_forward", "softmax_rows"),
    "dense": ("dense_forward", "dropout_forward"),
    "conv": ("conv_forward", "conv_backward", "conv_transpose_forward", "depthwise_forward",
             "depthwise_backward"),
    "pooling": ("max_pool_forward", "avg_pool_forward", "max_pool_backward", "avg_pool_backward",
                "global_avg_forward", "global_max_forward"),
    "norm": ("batch_norm_forward", "batch_norm_backward", "layer_norm_forward", "layer_norm_backward",
             "group_norm_forward", "group_norm_backward"),
    "embedding": ("embedding_forward", "embedding_backward"),
    "recurrent": ("simple_rnn_forward", "lstm_forward", "gru_forward"),
    "attention": ("mha_forward", "mha_backward", "pos_embed_forward"),
    "losses": ("dense_loss", "categorical_ce", "sparse_ce", "sparse_matches"),
    "optim": ("sgd_step", "adam_step", "rmsprop_step", "nadam_step", "adagrad_step", "adadelta_step",
              "adamax_step", "lion_step", "segment_sumsq", "l1l2_penalty", "add_l1l2_grad", "clip_norms",
              "non_neg"),
}


def parameters(family: str, function: str) -> list[str]:
    """The parameter names of ``family.function`` in the contract."""
    return [p.strip() for p in CONTRACT[family][function][0].split(",")]
