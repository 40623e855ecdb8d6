"""checkpoint.py: a missing checkpoint is named together with the config key it came from."""

from pathlib import Path

import pytest
from conftest import UNTRAINED_ON_CPU
from torch import nn

from tinysaver_det.checkpoint import CheckedCheckpointer, load_tinysaver_weights
from tinysaver_det.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINYSAVER_YAML = REPO / "configs" / "Synthetic" / "tinysaver_R18_cascade_R18.yaml"


class TwoParts(nn.Module):
    """The part names load_tinysaver_weights fills: `saver` and `base`."""

    def __init__(self):
        super().__init__()
        self.saver = nn.Linear(3, 2)
        self.base = nn.Linear(3, 2)


def test_missing_file_names_what_it_was_for(tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*the model \(MODEL\.WEIGHTS\)"):
        CheckedCheckpointer(nn.Linear(3, 2)).load(missing)
    # The query string detectron2 allows on a checkpoint path does not hide the file's absence.
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        CheckedCheckpointer(nn.Linear(3, 2)).load(missing + "?matching_heuristics=True")


@pytest.mark.parametrize("part", ["SAVER", "BASE"])
def test_missing_sub_model_weights_name_their_key(tmp_path, part):
    cfg = load_config(
        str(TINYSAVER_YAML),
        [
            *UNTRAINED_ON_CPU,
            f"MODEL.TINYSAVER.{part}.WEIGHTS",
            str(tmp_path / "gone.pth"),
        ],
    )
    with pytest.raises(FileNotFoundError, match=rf"gone\.pth.*MODEL\.TINYSAVER\.{part}\.WEIGHTS"):
        load_tinysaver_weights(TwoParts(), cfg)


def test_an_existing_checkpoint_still_loads(tmp_path):
    source = nn.Linear(3, 2)
    CheckedCheckpointer(source, str(tmp_path)).save("ok")
    target = nn.Linear(3, 2)
    CheckedCheckpointer(target).load(str(tmp_path / "ok.pth"))
    assert all((a == b).all() for a, b in zip(source.parameters(), target.parameters()))
