"""The one config setup every entry point goes through."""
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import load_config


def setup_cfg(args, freeze: bool = True):
    """
    Build the config from `args.config_file` and `args.opts` (detectron2's default_argument_parser),
    set up logging for detectron2 and tinysaver_det, and save the config to OUTPUT_DIR.
    """
    cfg = load_config(args.config_file, args.opts)
    if freeze:
        cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="tinysaver_det")
    return cfg
