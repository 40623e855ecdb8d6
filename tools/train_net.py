#!/usr/bin/env python
"""
Train or evaluate any tinysaver_det config: the saver, the base, or a TinySaver model (which trains
the evaluator head with saver and base frozen). All logic lives in tinysaver_det.engine.

    python tools/train_net.py --config-file configs/Synthetic/saver_retinanet_R_18_FPN.yaml
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model_final.pth
    python tools/train_net.py --config-file ... --num-gpus 8
"""

from detectron2.engine import default_argument_parser
from tinysaver_det.engine.setup import launch_tool, setup_cfg
from tinysaver_det.engine.trainer import Trainer, evaluate_only


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        return evaluate_only(cfg, resume=args.resume)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch_tool(main, args)


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
