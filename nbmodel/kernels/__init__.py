"""Compiled kernels: ``cpu/`` (@njit), ``reference/`` (float64 NumPy oracle).

Nothing here is imported by ``import nbmodel``; backend.Device imports a family
module the first time a layer needs it.
"""
