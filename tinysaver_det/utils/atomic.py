"""
Atomic writes: a file appears complete under its final name or not at all, so an interrupted run
never leaves a half-written file that a later run would read as finished.
"""

import json
import os
import tempfile
from contextlib import contextmanager

import torch


@contextmanager
def atomic_path(path: str):
    """
    Yield a temporary path in the target's folder; on success it replaces `path` in one step.
    On failure (full disk, unwritable folder) the temporary file is removed, any earlier `path` is
    left intact, and the error names the file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
        os.close(fd)
    except OSError as e:
        message = f"Cannot write {path!r}: {e.strerror} (is the folder writable?)"
        raise OSError(e.errno, message) from e
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(
            e.errno,
            f"Could not write {path!r}: {e.strerror} (disk full or folder not writable?); "
            "earlier results are intact",
        ) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Not synced to disk: it guards against an interrupted process, and images are many."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(text: str, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def atomic_save_json(obj, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())


def atomic_torch_save(obj, path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
