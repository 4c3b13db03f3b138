"""The input log: every predicted image and its records, kept for the next training run.

:class:`InputLog` (``sink.py``) puts the parts together: ``records`` (the SQLite schema and
queries), ``images`` (each image stored once, content-addressed, local or S3; pruning),
``writer`` (the thread and queue that write both), ``feedback`` (true labels, and who may give
them) and ``export`` (the log as an MNIST-format dataset, for ``train --extra-data``).
"""
from .sink import InputLog

__all__ = ["InputLog"]
