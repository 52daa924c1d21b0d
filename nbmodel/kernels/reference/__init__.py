"""Plain-NumPy float64 reference of every kernel: the oracle the tests use.

One module per kernel family (dense.py, conv.py, recurrent.py, ...), written
for clarity, not speed: loops and textbook formulas, float64 throughout.
"""
