"""@njit CPU kernels, one module per layer family. See docs/kernels.md."""
