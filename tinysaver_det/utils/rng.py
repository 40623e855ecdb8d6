"""Reproducible draws from numpy's global RNG without disturbing it for the code around them."""

from contextlib import contextmanager

import numpy as np


@contextmanager
def numpy_global_seed(seed: int):
    """
    Seed numpy's global RNG for the block, then restore its earlier state. detectron2's
    augmentations (data.transforms) draw from np.random itself and take no Generator, so a seed of
    the global RNG is the only way to reproduce one augmented view without re-implementing them;
    the restore keeps the block from changing what later draws (a training sampler's seed) see.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
