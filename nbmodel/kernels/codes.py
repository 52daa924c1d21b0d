"""Integer codes the kernels switch on: activations and elementwise losses.

They live here, in the kernels package, because every device's kernels read
them and kernels depend on nothing above them; ``nbmodel.activations`` and
``nbmodel.losses`` map the public names onto these codes.
"""

# Activations. Keras 3 defaults, fixed in the kernels: leaky_relu
# negative_slope=0.2, elu alpha=1.0, gelu exact (erf, approximate=False).
LINEAR, RELU, SIGMOID, TANH, GELU, LEAKY_RELU, ELU, SILU, SOFTMAX = range(9)

# Backward of these needs the pre-activation z; the others need only the output y.
NEEDS_PREACTIVATION = frozenset({GELU, SILU})

# Elementwise losses (the losses family's ``dense_loss`` switches on them).
MSE, MAE, HUBER, BCE, BCE_LOGITS = range(5)
