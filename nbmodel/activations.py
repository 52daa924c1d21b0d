"""Activation names and the integer codes the kernels switch on."""
from __future__ import annotations

# One code per activation, defined with the kernels that implement them.
from .kernels.codes import ELU, GELU, LEAKY_RELU, LINEAR, NEEDS_PREACTIVATION, RELU, SIGMOID, SILU, SOFTMAX, TANH  # noqa: F401  (re-exported: layers use act_codes.RELU, ...)

CODES = {
    None: LINEAR, "linear": LINEAR, "relu": RELU, "sigmoid": SIGMOID, "tanh": TANH,
    "gelu": GELU, "leaky_relu": LEAKY_RELU, "elu": ELU, "silu": SILU, "swish": SILU,
    "softmax": SOFTMAX,
}
NAMES = {LINEAR: "linear", RELU: "relu", SIGMOID: "sigmoid", TANH: "tanh", GELU: "gelu",
         LEAKY_RELU: "leaky_relu", ELU: "elu", SILU: "silu", SOFTMAX: "softmax"}

# Keras 3 defaults, fixed in the kernels: leaky_relu negative_slope=0.2,
# elu alpha=1.0, gelu exact (erf, approximate=False).


def get(identifier, layer_name: str = "layer") -> int:
    """Code of an activation given by name (or None for linear)."""
    key = identifier.lower() if isinstance(identifier, str) else identifier
    if key not in CODES:
        raise ValueError(f"{layer_name}: unknown activation {identifier!r}; "
                         f"expected one of {sorted(k for k in CODES if k)}")
    return CODES[key]
