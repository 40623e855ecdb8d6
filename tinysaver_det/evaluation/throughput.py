"""ThroughputEvaluator: images per second of a model under inference_on_dataset, any detector."""

import time
from collections import OrderedDict

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm


class ThroughputEvaluator(DatasetEvaluator):
    """
    Counts images and the wall time from the first to the last processed batch (so model start-up
    is left out; the first batch's own time is not counted, which matters only for tiny sets).
    Distributed: images are summed and the slowest process's time is used.
    """

    def reset(self):
        self._count = 0
        self._first = None
        self._last = None

    def process(self, inputs, outputs):
        now = time.perf_counter()
        if self._first is None:
            self._first = now
        self._last = now
        self._count += len(inputs)

    def evaluate(self):
        span = (self._last - self._first) if self._first is not None else 0.0
        counts = comm.gather(self._count, dst=0)
        spans = comm.gather(span, dst=0)
        if not comm.is_main_process():
            return {}
        # The first batch has no start time of its own: count the images after it.
        timed = sum(counts) - comm.get_world_size()
        ips = timed / max(spans) if max(spans) > 0 and timed > 0 else float("nan")
        return {"speed": OrderedDict(images=sum(counts), images_per_second=ips)}
