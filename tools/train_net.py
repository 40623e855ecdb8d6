#!/usr/bin/env python
"""
Train or evaluate any tinysaver_det config: the saver, the base, or a TinySaver model (which trains
the evaluator head with saver and base frozen). All logic lives in tinysaver_det.engine.

    python tools/train_net.py --config-file configs/Synthetic/saver_retinanet_R_18_FPN.yaml
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model_final.pth
    python tools/train_net.py --config-file ... --num-gpus 8
"""

from detectron2.engine import default_argument_parser, launch
from tinysaver_det.engine.setup import end_distributed, setup_cfg
from tinysaver_det.engine.trainer import Trainer, evaluate_only


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        results = evaluate_only(cfg, resume=args.resume)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
        del trainer  # its DDP wrapper goes before the process group does
    end_distributed()
    return results


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
