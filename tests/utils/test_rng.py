"""Seeded blocks of numpy's global RNG: the same draws inside, the outer stream untouched."""

import numpy as np
import pytest

from detectron2.data import transforms as T
from tinysaver_det.utils.rng import numpy_global_seed


def test_seeded_block_repeats_its_draws_and_restores_the_outer_stream():
    np.random.seed(5)
    expected_outer = np.random.rand(3)
    np.random.seed(5)
    with numpy_global_seed(11):
        inner = np.random.rand(4)
    with numpy_global_seed(11):
        again = np.random.rand(4)
    np.testing.assert_array_equal(inner, again)
    np.testing.assert_array_equal(np.random.rand(3), expected_outer)


def test_state_is_restored_when_the_block_fails():
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    with pytest.raises(RuntimeError):
        with numpy_global_seed(1):
            np.random.rand(10)
            raise RuntimeError("mapper failed")
    assert np.random.rand() == expected


def test_detectron2_augmentations_repeat_under_one_seed():
    image = np.zeros((40, 60, 3), np.uint8)
    resize = T.ResizeShortestEdge((20, 30, 40), 200, sample_style="choice")
    augs = T.AugmentationList([resize, T.RandomFlip()])

    def draw(seed):
        with numpy_global_seed(seed):
            aug_input = T.AugInput(image)
            augs(aug_input)
            return aug_input.image.shape, aug_input.image.tobytes()

    assert all(draw(3) == draw(3) for _ in range(3))
    assert len({draw(s)[0] for s in range(20)}) > 1  # the seed does choose the size
