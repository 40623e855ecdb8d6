"""The demo's side-by-side lanes: each stage gets its share of the CPU threads, and a failing lane
stops the others instead of letting them run on."""

import os
import sys
import time

import pytest
from conftest import load_tool

Demo = load_tool("demo").Demo

PRINT_THREADS = [
    sys.executable,
    "-c",
    "import os; print('threads=' + os.environ.get('OMP_NUM_THREADS', 'unset'))",
]


def test_lanes_share_the_cpu_threads(tmp_path):
    demo = Demo(str(tmp_path), quick=True, jobs=2)
    demo.side_by_side(
        lambda: demo.stage("left", False, PRINT_THREADS),
        lambda: demo.stage("right", False, PRINT_THREADS),
    )
    demo.stage("alone", False, PRINT_THREADS)
    share = max(1, (os.cpu_count() or 1) // 2)
    for name in ("left", "right"):
        assert (tmp_path / "logs" / f"{name}.log").read_text().strip() == f"threads={share}"
    alone = f"threads={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    assert (tmp_path / "logs" / "alone.log").read_text().strip() == alone


def test_one_job_runs_lanes_one_after_the_other(tmp_path):
    demo = Demo(str(tmp_path), quick=True, jobs=1)
    order = []
    lanes = (lambda: order.append("a") or 1, lambda: order.append("b") or 2)
    assert demo.side_by_side(*lanes) == [1, 2]
    assert order == ["a", "b"]


@pytest.mark.timeout(120)
def test_a_failing_lane_stops_the_others(tmp_path):
    demo = Demo(str(tmp_path), quick=True, jobs=2)
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]

    def failing():
        deadline = time.monotonic() + 60
        while "sleeper" not in demo._running:  # fail once the other lane's stage is running
            if time.monotonic() > deadline:
                raise TimeoutError("the other lane's stage never started")
            time.sleep(0.05)
        raise ValueError("this lane failed")

    with pytest.raises(ValueError, match="this lane failed"):
        demo.side_by_side(lambda: demo.stage("sleeper", False, sleeper), failing)
    assert demo.times["sleeper"] < 60  # terminated, not waited for
    with pytest.raises(RuntimeError, match="another stage failed"):
        demo.stage("later", False, PRINT_THREADS)  # nothing new starts after a failure


def test_the_synthetic_splits_are_generated_in_lanes_of_about_equal_images():
    split_lanes = load_tool("demo").split_lanes
    from tinysaver_det.data.synthetic import SYNTHETIC_SPLITS

    groups = split_lanes(SYNTHETIC_SPLITS, 2)
    assert sorted(s for g in groups for s in g) == sorted(SYNTHETIC_SPLITS)
    images = [sum(SYNTHETIC_SPLITS[s].num_images for s in g) for g in groups]
    largest = max(d.num_images for d in SYNTHETIC_SPLITS.values())
    assert len(groups) == 2 and max(images) - min(images) <= largest
    assert split_lanes(SYNTHETIC_SPLITS, 1) == [
        sorted(SYNTHETIC_SPLITS, key=lambda s: -SYNTHETIC_SPLITS[s].num_images)
    ]
