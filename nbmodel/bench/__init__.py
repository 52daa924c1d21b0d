"""Speed measurement that ships with the package: the reference models of
BENCHMARKS.md (``models.py``), timers and the BLAS ceiling (``timing.py``), and
``nbmodel bench`` (``runner.py``). The asv suite in benchmarks/ builds on these."""
from .models import REFERENCE_MODELS, RefModel
from .runner import format_table, run
from .timing import blas_ceiling_gflops, interleaved_medians, median_time, torch_train_step

__all__ = ["REFERENCE_MODELS", "RefModel", "blas_ceiling_gflops", "format_table", "interleaved_medians",
           "median_time", "run", "torch_train_step"]
