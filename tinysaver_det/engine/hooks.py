"""Training hooks for the evaluator."""

import logging
import os

import numpy as np
import torch

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..evaluation.calibration import rank_correlation
from ..modeling.routing import confidence_scores, evaluator_scores
from ..utils.atomic import atomic_save_json

logger = logging.getLogger(__name__)


def rank_correlations(evaluator, records, truth: np.ndarray) -> dict:
    """
    Spearman correlation of the evaluator's score and of saver confidence with the true routing
    quality `truth` of each record (output_cache.true_quality).
    """
    summary = torch.stack([r["summary"] for r in records]).to(next(evaluator.parameters()).device)
    # The routers' own score functions, as the model and the calibration score images.
    scores = evaluator_scores(evaluator, summary).cpu().numpy()
    confidence = confidence_scores([r["confidence"] for r in records]).numpy()
    return {
        "spearman_evaluator": rank_correlation(scores, truth, "held-out images, evaluator"),
        "spearman_confidence": rank_correlation(confidence, truth, "held-out images, confidence"),
        "num_images": len(records),
    }


class RankCorrelationHook(HookBase):
    """
    Every `period` iterations (and after the last), log the Spearman correlation between the
    evaluator's scores and the true routing quality (`truth`, one per record) on held-out cached
    records, beside the correlation of the saver-confidence signal, and write the last values to
    OUTPUT_DIR.
    """

    def __init__(self, period: int, records, truth: np.ndarray, output_dir: str):
        self._period = period
        self._records = records
        self._truth = np.asarray(truth, np.float64)
        self._output_dir = output_dir

    def _evaluate(self):
        model = getattr(self.trainer.model, "module", self.trainer.model)
        result = rank_correlations(model.evaluator, self._records, self._truth)
        storage = self.trainer.storage
        storage.put_scalar(
            "tinysaver/spearman_heldout", result["spearman_evaluator"], smoothing_hint=False
        )
        storage.put_scalar(
            "tinysaver/spearman_confidence", result["spearman_confidence"], smoothing_hint=False
        )
        logger.info(
            f"Held-out rank correlation with true quality ({result['num_images']} images): "
            f"evaluator {result['spearman_evaluator']:.4f}, "
            f"saver confidence {result['spearman_confidence']:.4f}"
        )
        return result

    def after_step(self):
        next_iter = self.trainer.iter + 1
        periodic = self._period > 0 and next_iter % self._period == 0
        if periodic and next_iter != self.trainer.max_iter:
            self._evaluate()

    def after_train(self):
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            result = self._evaluate()
            if comm.is_main_process():
                path = os.path.join(self._output_dir, "evaluator_rank_correlation.json")
                atomic_save_json(result, path)
