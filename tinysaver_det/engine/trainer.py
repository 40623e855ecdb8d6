"""
The trainer behind tools/train_net.py: detectron2's DefaultTrainer for the saver, the base and
TinySaver configs. For a TinySaver config it trains only the evaluator, on cached saver outputs.
"""

import logging
import os
import weakref

from torch.nn.parallel import DistributedDataParallel

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, create_ddp_model, hooks
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..calibration_result import CalibrationResult
from ..checkpoint import CheckedCheckpointer, load_tinysaver_weights
from ..data.checks import (
    RobustDatasetMapper,
    build_test_mapper,
    check_dataset_files,
    checked_dataset_dicts,
)
from ..evaluation.coco_evaluator import CheckedCOCOEvaluator
from ..evaluation.routing_evaluator import RoutingEvaluator
from ..evaluation.throughput import ThroughputEvaluator
from ..flops import first_test_inputs, tinysaver_costs
from ..utils.atomic import atomic_save_json
from .hooks import RankCorrelationHook
from .output_cache import OutputCache, cached_examples, training_cache_spec, true_quality

logger = logging.getLogger(__name__)


def is_tinysaver(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "TinySaverRCNN"


def held_out_dataset(cfg) -> str:
    cal = cfg.MODEL.TINYSAVER.CALIBRATION
    return cal.HELD_OUT_DATASET or cal.DATASET


def routing_costs(cfg, model, dataset_name: str):
    """GFLOPs per image of the sub-models: from the calibration file if any, else measured."""
    path = cfg.MODEL.TINYSAVER.CALIBRATION_FILE
    if path and os.path.isfile(path):
        return CalibrationResult.load(path).costs
    inputs = first_test_inputs(cfg, dataset_name, cfg.MODEL.TINYSAVER.CALIBRATION.FLOPS_IMAGES)
    return tinysaver_costs(model, inputs)


def results_path(cfg) -> str:
    return os.path.join(cfg.OUTPUT_DIR, "inference", "results.json")


def forget_results(cfg) -> None:
    """
    Remove the results.json of an earlier evaluation in OUTPUT_DIR before a new one starts, so that
    a run that fails leaves no results that look like its own.
    """
    path = results_path(cfg)
    if comm.is_main_process() and os.path.isfile(path):
        os.remove(path)
        logger.info(f"Removed the earlier results {path}")


def check_inference_weights(cfg, resume: bool = False) -> None:
    """
    Evaluating or calibrating a TinySaver model needs its trained evaluator: an empty MODEL.WEIGHTS
    would leave the evaluator randomly initialised and its routing meaningless, so it is refused.
    """
    resumable = resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if is_tinysaver(cfg) and not cfg.MODEL.WEIGHTS and not resumable:
        raise ValueError(
            "MODEL.WEIGHTS is empty: evaluating or calibrating a TinySaver model needs its trained "
            "evaluator. Give the checkpoint tools/train_net.py wrote for this config "
            "(OUTPUT_DIR/model_final.pth) as MODEL.WEIGHTS."
        )


def evaluate_only(cfg, resume: bool = False) -> dict:
    """tools/train_net.py --eval-only: the model with its weights, evaluated on DATASETS.TEST."""
    forget_results(cfg)  # first: the checks and loading below may fail
    check_inference_weights(cfg, resume)
    model = Trainer.build_model(cfg)
    load_weights(model, cfg, resume=resume)
    return Trainer.test(cfg, model)


def load_weights(model, cfg, resume: bool = False, checkpointer=None):
    """
    Load a model's weights the way training and evaluation both do: for TinySaver, the saver's and
    base's own checkpoints first, then MODEL.WEIGHTS (or, with resume, OUTPUT_DIR's last checkpoint)
    through `checkpointer` (the trainer's, so that a resume restores its optimizer and scheduler).
    Returns what the checkpointer's resume_or_load returns.
    """
    if is_tinysaver(cfg):
        load_tinysaver_weights(model, cfg, whole_model=False)
    checkpointer = checkpointer or CheckedCheckpointer(model, cfg.OUTPUT_DIR)
    return checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)


def create_ddp_model_any_device(model, **kwargs):
    """
    detectron2's create_ddp_model passes device_ids=[local rank] even for a CPU model, which
    DistributedDataParallel refuses; on the CPU (gloo) the model is wrapped without device_ids.
    """
    if comm.get_world_size() == 1 or next(model.parameters()).device.type != "cpu":
        return create_ddp_model(model, **kwargs)
    return DistributedDataParallel(model, **kwargs)


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        """
        DefaultTrainer.__init__ written out (its constructor hard-wires detectron2's DDP wrapper and
        checkpointer): the model is wrapped by create_ddp_model_any_device, and checkpoints are
        written atomically and loaded with clear refusals by CheckedCheckpointer (checkpoint.py),
        which the hooks built below then use too.
        """
        super(DefaultTrainer, self).__init__()  # TrainerBase's: DefaultTrainer's is the one above
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()  # setup_logger is not called for detectron2
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        model = create_ddp_model_any_device(model, broadcast_buffers=False)
        trainer_class = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_class(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = CheckedCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg

        self.register_hooks(self.build_hooks())

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None, costs=None):
        """
        COCO box AP against the checked ground truth (the boxes training and calibration see);
        for TinySaver also the routing figures (exit rate, GFLOPs, AP per path).
        """
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluators = [
            CheckedCOCOEvaluator(
                dataset_name, tasks=("bbox",), distributed=True, output_dir=output_folder
            ),
            ThroughputEvaluator(),
        ]
        if is_tinysaver(cfg):
            evaluators.append(RoutingEvaluator(dataset_name, costs, output_dir=output_folder))
        return DatasetEvaluators(evaluators)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """
        DefaultTrainer.test, plus the routing evaluator's cost figures for TinySaver; the results
        are always keyed by dataset name (DefaultTrainer unwraps a single dataset) and written to
        OUTPUT_DIR/inference/results.json.
        """
        forget_results(cfg)
        check_dataset_files(cfg.DATASETS.TEST)  # before evaluators that open the json themselves
        if evaluators is None and is_tinysaver(cfg):
            bare = getattr(model, "module", model)
            evaluators = [
                cls.build_evaluator(cfg, name, costs=routing_costs(cfg, bare, name))
                for name in cfg.DATASETS.TEST
            ]
        results = super().test(cfg, model, evaluators)
        if len(cfg.DATASETS.TEST) == 1:
            results = {cfg.DATASETS.TEST[0]: results}
        if comm.is_main_process():
            atomic_save_json(results, results_path(cfg))
        return results

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        # The oracle router routes by true per-image quality: its images keep their ground truth.
        oracle = is_tinysaver(cfg) and cfg.MODEL.TINYSAVER.ROUTER == "oracle"
        dicts = checked_dataset_dicts([dataset_name], cfg.MODEL.TINYSAVER.DATA.SKIP_BAD_IMAGES)
        mapper = build_test_mapper(cfg, with_ground_truth=oracle)
        return build_detection_test_loader(
            dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS
        )

    @classmethod
    def build_train_loader(cls, cfg):
        if not is_tinysaver(cfg):
            skip_bad = cfg.MODEL.TINYSAVER.DATA.SKIP_BAD_IMAGES
            dicts = checked_dataset_dicts(cfg.DATASETS.TRAIN, skip_bad)
            if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
                dicts = [d for d in dicts if d["annotations"]]
            mapper = RobustDatasetMapper(cfg, is_train=True)
            return build_detection_train_loader(cfg, mapper=mapper, dataset=dicts)
        views, with_base = training_cache_spec(cfg)
        caches = [
            OutputCache(cfg, name, views=views, with_base=with_base) for name in cfg.DATASETS.TRAIN
        ]
        examples = cached_examples(caches, cfg.MODEL.TINYSAVER.EVALUATOR.TARGET)
        logger.info(
            f"Training the evaluator on {len(examples)} cached views of {cfg.DATASETS.TRAIN}"
        )
        return build_detection_train_loader(
            examples,
            mapper=None,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=False,
        )

    def resume_or_load(self, resume=True):
        load_weights(self.model, self.cfg, resume=resume, checkpointer=self.checkpointer)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1

    def build_hooks(self):
        ret = super().build_hooks()
        if not is_tinysaver(self.cfg):
            return ret
        # A routed COCO evaluation every period would cost minutes; the evaluator's progress is its
        # rank correlation with true quality on held-out cached images, which costs milliseconds.
        ret = [h for h in ret if not isinstance(h, hooks.EvalHook)]
        name = held_out_dataset(self.cfg)
        if name:
            target = self.cfg.MODEL.TINYSAVER.EVALUATOR.TARGET
            # The base runs only where it is needed: for a target that compares the detectors, or
            # on the calibration split, whose cache calibration reuses (and needs the base for).
            with_base = target != "saver_ap" or name == self.cfg.MODEL.TINYSAVER.CALIBRATION.DATASET
            cache = OutputCache(self.cfg, name, views=1, with_base=with_base)
            truth = true_quality(cache, target)
            hook = RankCorrelationHook(
                self.cfg.TEST.EVAL_PERIOD, cache.load_or_build(), truth, self.cfg.OUTPUT_DIR
            )
            ret.insert(len(ret) - 1, hook)  # before the PeriodicWriter, which must stay last
        return ret
