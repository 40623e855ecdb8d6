"""Shared test settings, and the trained saver and base that the pipeline tests share."""

import importlib.util
import os
import uuid
from dataclasses import dataclass
from typing import Dict

import numpy as np
import pytest
import torch

# The tests run tiny detectors on tiny images: one intra-op thread is the fastest, and on a machine
# whose cores are busy (a training run next to the tests), more threads oversubscribe the CPU and
# make every forward pass tens of times slower.
torch.set_num_threads(1)

SYNTHETIC_CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "Synthetic")
INSTANT = {
    part: os.path.abspath(os.path.join(SYNTHETIC_CONFIGS, f"{part}_instant_test.yaml"))
    for part in ("saver", "base", "tinysaver")
}
# The demo's quick variant generates its data at this scale; the fixture generates the same splits,
# so the demo reuses them.
QUICK_SCALE = 0.02
# COCO-sized configs kept cheap in tests: the architecture stays, the images shrink.
TINY_INPUT = [
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "96",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "96",
]
# Options of a TinySaver config for its detectors as initialised, on the CPU: the configs name the
# checkpoints that `make demo` trains, which a test does not have.
UNTRAINED_ON_CPU = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.TINYSAVER.SAVER.WEIGHTS",
    "",
    "MODEL.TINYSAVER.BASE.WEIGHTS",
    "",
]
TOOLS = os.path.join(os.path.dirname(__file__), "..", "tools")


def load_tool(name: str):
    """A script of tools/ as a module (tools/ is not a package), to call what its CLI calls."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class TrainedDetectors:
    root: str  # data root holding synthetic/ (every split at QUICK_SCALE)
    prefix: str  # the splits are registered as f"{prefix}_{split}"
    weights: Dict[str, str]  # "saver"/"base" -> model_final.pth
    configs: Dict[str, str]  # "saver"/"base"/"tinysaver" -> the instant-test config

    def tinysaver_config(self, cache_dir, *opts):
        """
        The instant-test TinySaver config on the CPU with these saver and base weights, caching
        under `cache_dir`; `opts` are further KEY VALUE overrides, as on a command line.
        """
        from tinysaver_det.config import load_config

        return load_config(
            self.configs["tinysaver"],
            [
                "MODEL.DEVICE",
                "cpu",
                "MODEL.TINYSAVER.SAVER.WEIGHTS",
                self.weights["saver"],
                "MODEL.TINYSAVER.BASE.WEIGHTS",
                self.weights["base"],
                "MODEL.TINYSAVER.CACHE.DIR",
                str(cache_dir),
                *map(str, opts),
            ],
        )


@pytest.fixture(scope="session")
def trained_detectors(tmp_path_factory) -> TrainedDetectors:
    """
    The instant-test saver (48 px) and base (96 px) trained in this session, one thread, about a
    minute together, so that pipeline tests see detectors whose answers are not all zero. They train
    on the train, calib and val splits, the images the tests then run them on: the tests check the
    pipeline's mechanics at a real operating point, not how well the detectors generalise.
    """
    import tinysaver_det  # noqa: F401
    from tinysaver_det.config import load_config
    from tinysaver_det.data.datasets import register_synthetic
    from tinysaver_det.data.synthetic import prepare_all
    from tinysaver_det.engine.trainer import Trainer

    root = str(tmp_path_factory.mktemp("quick_data"))
    prepare_all(root, scale=QUICK_SCALE, progress=False)
    prefix = f"trained{uuid.uuid4().hex[:6]}"
    register_synthetic(root, prefix=prefix)
    out = tmp_path_factory.mktemp("detectors")
    weights = {}
    for part in ("saver", "base"):
        cfg = load_config(
            INSTANT[part],
            [
                "MODEL.DEVICE",
                "cpu",
                "OUTPUT_DIR",
                str(out / part),
                "DATASETS.TEST",
                "()",
                "DATASETS.TRAIN",
                str(tuple(f"{prefix}_{s}" for s in ("train", "calib", "val"))),
            ],
        )
        torch.manual_seed(0)
        np.random.seed(0)  # the sampler's order and the augmentations
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        weights[part] = str(out / part / "model_final.pth")
        assert os.path.isfile(weights[part])
    return TrainedDetectors(root=root, prefix=prefix, weights=weights, configs=dict(INSTANT))


@pytest.fixture(scope="session")
def synthetic_split(tmp_path_factory):
    """
    A factory: generate `num_images` images of one synthetic split in a fresh folder, register it
    under a unique prefix and return the dataset name.
    """
    from tinysaver_det.data.datasets import register_synthetic
    from tinysaver_det.data.synthetic import generate_split, split_spec

    def make(split: str, num_images: int, prefix: str) -> str:
        root = str(tmp_path_factory.mktemp("data"))
        generate_split(
            root, split, split_spec(split, scale=0.01), num_images=num_images, progress=False
        )
        prefix = f"{prefix}{uuid.uuid4().hex[:6]}"
        register_synthetic(root, prefix=prefix)
        return f"{prefix}_{split}"

    return make
