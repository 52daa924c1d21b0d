"""Compiled kernels, one package per device, and what they share.

- ``contract.py``: the launch functions every device's package provides, per
  family (the one list a new device implements; a test checks each package).
- ``codes.py``: the activation and loss codes the kernels switch on.
- ``cpu/``: ``@njit`` kernels and their CPU scheduling (threads, chunks, BLAS).
- ``reference/``: the float64 NumPy oracle the tests compare against, under
  the contract's names.

Nothing here imports a module of ``nbmodel`` other than ``config``, and
nothing here is imported by ``import nbmodel``: a device imports a family
module the first time a layer needs it.
"""
