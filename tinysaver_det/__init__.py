"""
TinySaver for Detectron2: a small saver detector runs on every image, a learned evaluator head
scores its detections, and only low-scoring images go to the large base detector.

Importing this package registers everything it adds to detectron2: the TinySaverRCNN
meta-architecture, the evaluator heads and the datasets.
"""

from . import data, modeling  # noqa: F401  (imported for their registrations)
from .config import add_tinysaver_config

__all__ = ["add_tinysaver_config"]
__version__ = "0.1.0"
