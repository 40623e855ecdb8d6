"""
A light backbone for savers: detectron2's RegNet (:paper:`dds`) under an FPN, registered as
``build_regnet_fpn_backbone``. detectron2 ships the RegNet module but builds it only from lazy
configs; this builder makes it available to yacs configs (MODEL.TINYSAVER.REGNET).

A saver should be about as good as the base on easy images, so it runs near the base's resolution:
the backbone is what makes it cheap. RegNetX-200MF (the default keys) costs a fraction of a
ResNet-18 at the same input size.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.regnet import RegNet, ResBottleneckBlock, SimpleStem


def build_regnet(cfg) -> RegNet:
    """The RegNet bottom-up network described by MODEL.TINYSAVER.REGNET."""
    r = cfg.MODEL.TINYSAVER.REGNET
    return RegNet(
        stem_class=SimpleStem,
        stem_width=r.STEM_WIDTH,
        block_class=ResBottleneckBlock,
        depth=r.DEPTH,
        w_a=r.W_A,
        w_0=r.W_0,
        w_m=r.W_M,
        group_width=r.GROUP_WIDTH,
        se_ratio=r.SE_RATIO,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        norm=r.NORM,
        out_features=list(r.OUT_FEATURES),
    )


@BACKBONE_REGISTRY.register()
def build_regnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """RegNet + FPN (with a max-pooled top level, as detectron2's ResNet FPN for the RPN's p6)."""
    return FPN(
        bottom_up=build_regnet(cfg),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
