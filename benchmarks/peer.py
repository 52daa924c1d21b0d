"""The reference models, nbmodel against PyTorch: the same as ``nbmodel bench``.

    python -m benchmarks.peer --threads 1 --vs torch [--models mlp,cnn] [--device cuda]

Kept under this name because benchmarks.compare runs ``python -m benchmarks.peer``
in each revision it compares (older revisions have no ``nbmodel bench``).
"""
import sys

from nbmodel.bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
