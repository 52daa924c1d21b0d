"""Keras' ``keras.utils`` names that nbmodel has (``nb.utils.PyDataset``)."""
from .data import PyDataset

__all__ = ["PyDataset"]
