"""Atomic checkpoint writes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<dir>/.<name>.tmp-<pid>`` in the checkpoint's own folder, fsyncs it, then ``os.replace``s it onto
    the target: a process killed at any moment leaves either the previous checkpoint or the new one, never a
    truncated file. (Lightning's default goes through a temp file in the system temp dir and ``shutil.move``, which
    is a copy, not a rename, when that dir is on another filesystem.) Remote URLs use the default writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
