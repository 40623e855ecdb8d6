"""
Atomic writes: a file is complete under its name or absent; failures name the file and keep
earlier results.
"""

import json
import os

import pytest
import torch

from tinysaver_det.checkpoint import CheckedCheckpointer
from tinysaver_det.utils.atomic import (
    atomic_save_json,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
)


def test_failed_write_keeps_the_earlier_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    atomic_save_json({"ap": 41.0}, str(path))
    with pytest.raises(TypeError):
        atomic_save_json({"ap": object()}, str(path))  # fails halfway through writing
    assert json.loads(path.read_text()) == {"ap": 41.0}
    assert os.listdir(tmp_path) == ["result.json"]


def test_failed_byte_and_text_writes_keep_the_earlier_file(tmp_path):
    image, config = tmp_path / "a.jpg", tmp_path / "config.yaml"
    atomic_write_bytes(b"jpeg", str(image))
    atomic_write_text("A: 1\n", str(config))
    with pytest.raises(TypeError):
        atomic_write_bytes("not bytes", str(image))
    with pytest.raises(TypeError):
        atomic_write_text(b"not text", str(config))
    assert image.read_bytes() == b"jpeg" and config.read_text() == "A: 1\n"
    assert sorted(os.listdir(tmp_path)) == ["a.jpg", "config.yaml"]


def test_unwritable_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="file/out.pth"):
        atomic_torch_save({"a": 1}, str(blocker / "out.pth"))


def test_checkpointer_saves_atomically_and_tags_the_last_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    checkpointer = CheckedCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000009")
    assert checkpointer.get_checkpoint_file().endswith("model_0000009.pth")

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="model_final.pth"):
        checkpointer.save("model_final")
    assert not (tmp_path / "model_final.pth").exists()  # never half-written under its name
    assert checkpointer.get_checkpoint_file().endswith("model_0000009.pth")  # resume still works
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
