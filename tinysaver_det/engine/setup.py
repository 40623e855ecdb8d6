"""The one config setup every entry point goes through."""

import logging
from contextlib import contextmanager
from functools import partial
from logging.handlers import BufferingHandler

import torch.distributed as dist

from detectron2.engine import default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import check_sub_configs, load_config


@contextmanager
def held_logs(name: str = "tinysaver_det"):
    """
    Hold the INFO and higher records of logger `name` until the block ends, then let the caller
    replay them: loading the config logs (e.g. where THRESHOLD comes from) before the logger that
    writes to OUTPUT_DIR can exist.
    """
    logger = logging.getLogger(name)
    held = BufferingHandler(capacity=10_000)
    level = logger.level
    logger.addHandler(held)
    logger.setLevel(logging.INFO)
    try:
        yield held.buffer
    finally:
        logger.removeHandler(held)
        logger.setLevel(level)


def setup_cfg(args, freeze: bool = True):
    """
    Build the config from `args.config_file` and `args.opts` (detectron2's default_argument_parser),
    set up logging for detectron2 and tinysaver_det, and save the config to OUTPUT_DIR.
    Every path in it is absolute and CALIBRATION_FILE's threshold is resolved (see load_config).
    """
    with held_logs() as records:
        cfg = load_config(args.config_file, args.opts)
        # Before default_setup writes OUTPUT_DIR/config.yaml: a run that cannot start overwrites
        # nothing.
        check_sub_configs(cfg)
    if freeze:
        cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="tinysaver_det")
    for record in records:
        logging.getLogger(record.name).handle(record)
    return cfg


def end_distributed() -> None:
    """
    Under detectron2's launch: wait for every process, then destroy the process group before the
    process exits. A gloo group left alive at exit can abort a process ("terminate called without
    an active exception"), which launch reports as a failure after the work is done.
    """
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()


def _run_then_end_distributed(main, args):
    result = main(args)
    end_distributed()
    return result


def launch_tool(main, args) -> None:
    """
    A tool's `main(args)` under detectron2's launch, with default_argument_parser's process
    options; each process ends its process group once `main` returns (end_distributed).
    """
    launch(
        partial(_run_then_end_distributed, main),  # a partial pickles for launch's spawned workers
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
