"""
Checkpoint loading with clear refusals, and the one helper that loads separately trained saver and
base checkpoints into a TinySaver model's `saver.` and `base.` parts.
"""

import logging
import os
from typing import Optional, Sequence
from urllib.parse import urlparse

from torch.nn.parallel import DistributedDataParallel

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

from .utils.atomic import atomic_torch_save

logger = logging.getLogger(__name__)

# At least this share of a checkpoint's entries must fit the model by name and shape, and at most
# this many (or 5% of the model's) may have a fitting name but another shape (a classifier for
# another number of classes is fine), or the checkpoint is taken to be of another architecture and
# refused instead of silently leaving parts of the model random.
MIN_MATCHED_SHARE = 0.5
MAX_RESHAPED = 8
TINYSAVER_PREFIXES = ("saver.", "base.", "evaluator.")


class CheckedCheckpointer(DetectionCheckpointer):
    """
    A DetectionCheckpointer (so .pth and model-zoo .pkl files, with detectron2's name-matching
    heuristics) that names the file in every error and refuses checkpoints of another architecture.

    Args:
        what: how errors name the model, e.g. "the saver (MODEL.TINYSAVER.SAVER.WEIGHTS)".
    """

    def __init__(
        self, model, save_dir: str = "", *, what: str = "the model (MODEL.WEIGHTS)", **kwargs
    ):
        super().__init__(model, save_dir, **kwargs)
        self.what = what
        self._current_file: Optional[str] = None

    def save(self, name: str, **kwargs) -> None:
        """
        fvcore's save, written under a temporary name and renamed: an interrupted save never leaves
        a half-written checkpoint under the final name (which a resumed run would take as finished).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def load(self, path, *args, **kwargs):
        """DetectionCheckpointer.load, refusing a missing local file with the key it came from."""
        local = urlparse(path)._replace(query="").geturl() if path else ""
        # A DDP model's load is synchronised across processes by DetectionCheckpointer: leave it be.
        ddp = isinstance(self.model, DistributedDataParallel)
        if local and "://" not in local and not ddp and not os.path.isfile(local):
            raise FileNotFoundError(
                f"The checkpoint {path!r} for {self.what} does not exist (relative paths resolve "
                f"against the working directory when the config is loaded; now {os.getcwd()!r})"
            )
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        self._current_file = filename
        try:
            return super()._load_file(filename)
        except Exception as e:
            raise RuntimeError(
                f"Could not read the checkpoint {filename!r} for {self.what}: "
                f"{type(e).__name__}: {e}. "
                "The file may be truncated or not a checkpoint; re-download or re-train it."
            ) from e

    def _load_model(self, checkpoint):
        if checkpoint.get("matching_heuristics", False):
            # Convert model-zoo names now, so the architecture check sees the final names.
            self._convert_ndarray_to_tensor(checkpoint["model"])
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(),
                checkpoint["model"],
                c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
            )
            checkpoint["matching_heuristics"] = False
        self._check_architecture(checkpoint["model"])
        return super()._load_model(checkpoint)

    def _check_architecture(self, state: dict) -> None:
        """
        Refuse a checkpoint that is mostly unusable here (under half of its entries fit by name and
        shape: another model, or a prefix mismatch) or whose shared names have other shapes beyond a
        classifier's worth (the same layers at other widths: another architecture).
        """
        own = self.model.state_dict()
        shared = [k for k in own if k in state]
        matched = sum(1 for k in shared if tuple(state[k].shape) == tuple(own[k].shape))
        reshaped = len(shared) - matched
        enough = matched >= MIN_MATCHED_SHARE * max(1, len(state))
        if enough and reshaped <= max(MAX_RESHAPED, 0.05 * len(own)):
            return
        hint = ""
        if any(k.startswith(TINYSAVER_PREFIXES) for k in state) and not any(
            k.startswith(TINYSAVER_PREFIXES) for k in own
        ):
            hint = " It is a whole TinySaver checkpoint: give it as MODEL.WEIGHTS."
        elif any(k.startswith(TINYSAVER_PREFIXES) for k in own):
            hint = (
                " It looks like a single detector's checkpoint: give it as "
                "MODEL.TINYSAVER.SAVER.WEIGHTS or MODEL.TINYSAVER.BASE.WEIGHTS."
            )
        raise ValueError(
            f"The checkpoint {self._current_file!r} does not fit {self.what}: {matched} of its "
            f"{len(state)} entries match the model by name and shape, {reshaped} have the right "
            f"name but another shape.{hint} Check that the config file describes the architecture "
            "the checkpoint was trained with."
        )


def load_tinysaver_weights(
    model, cfg, whole_model: bool = True, parts: Sequence[str] = ("SAVER", "BASE")
) -> None:
    """
    Load MODEL.TINYSAVER.SAVER.WEIGHTS and .BASE.WEIGHTS (those of `parts`) into the model's `saver`
    and `base`, then (if `whole_model`) MODEL.WEIGHTS, a whole TinySaver checkpoint, over all three.
    """
    model = getattr(model, "module", model)  # unwrap DDP
    for part in parts:
        path = cfg.MODEL.TINYSAVER[part].WEIGHTS
        if path:
            what = f"the {part.lower()} (MODEL.TINYSAVER.{part}.WEIGHTS)"
            CheckedCheckpointer(getattr(model, part.lower()), what=what).load(path)
            logger.info(f"Loaded {what} from {path}")
    if whole_model and cfg.MODEL.WEIGHTS:
        what = "the TinySaver model (MODEL.WEIGHTS)"
        CheckedCheckpointer(model, what=what).load(cfg.MODEL.WEIGHTS)
