"""Robustness tests of a model: JPEG re-encoding (``jpeg``) and the 15 CIFAR-10-C corruptions
(``corruptions``), applied to evaluation images and by ``benchmarks/corruptions.py``."""
