"""
Every demo track names config files that exist, and its TinySaver config wraps the very saver and
base configs that the track trains (else the demo would train one detector and deploy another).
"""

import os

import pytest
from conftest import load_tool

from tinysaver_det.config import load_config

demo_tool = load_tool("demo")


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
@pytest.mark.parametrize("track", sorted(demo_tool.TRACKS))
def test_the_track_trains_what_its_tinysaver_config_deploys(track, quick):
    spec = demo_tool.TRACKS[track]
    paths = {part: spec.config(part, quick) for part in ("saver", "base", "tinysaver")}
    for part, path in paths.items():
        assert os.path.isfile(path), f"{track} track, {part}: {path} does not exist"
    # resolve=False: no dataset registration, so this needs no shared data.
    cfg = load_config(paths["tinysaver"], resolve=False)
    for part in ("saver", "base"):
        wrapped = cfg.MODEL.TINYSAVER[part.upper()].CONFIG_FILE
        assert os.path.realpath(wrapped) == os.path.realpath(paths[part]), (track, part)
