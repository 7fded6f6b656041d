"""Lightning tasks, and loading a checkpoint as the task it holds."""

from __future__ import annotations

from pathlib import Path

from .base import BaseTask, checkpoint_kind
from .instance import InstanceSegmentor
from .semantic import SemanticSegmentor

# task kind (recorded in every checkpoint) -> task class
TASKS: dict[str, type[BaseTask]] = {"semantic": SemanticSegmentor, "instance": InstanceSegmentor}


def load_task(path: str | Path, device: str = "cpu") -> BaseTask:
    """The task a checkpoint holds (its ``autotimm`` record says which), loaded weights-only (no code from the file
    runs; an architecture spec naming a user's module imports that module), in eval mode."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: {path} does not exist")
    kind = checkpoint_kind(torch.load(path, map_location="cpu", weights_only=True), path)
    if kind not in TASKS:
        raise ValueError(f"{path}: holds a {kind!r} task; this version knows {sorted(TASKS)}")
    return TASKS[kind].load_from_checkpoint(str(path), map_location=device, weights_only=True).eval()


__all__ = ["InstanceSegmentor", "SemanticSegmentor", "TASKS", "load_task"]
