"""Datasets: the procedural synthetic detection set and the registration of all datasets."""

# Imported for their registrations: importing `tinysaver_det` registers every dataset.
from . import datasets, synthetic  # noqa: F401
