"""AutoTrainer: a Lightning ``Trainer`` with the callbacks a segmentation run wants by default."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar


class AutoTrainer(pl.Trainer):
    """``pl.Trainer`` plus defaults, each added only if ``callbacks`` has none of its type:

    - ``ModelCheckpoint`` keeping the best checkpoint on ``checkpoint_monitor`` (``best-...ckpt``) and ``last.ckpt``;
    - ``RichProgressBar`` (when the progress bar is enabled);
    - ``LearningRateMonitor`` (when a logger is configured).

    There is no hidden learning-rate finder or other tuning: ``fit`` trains with what you passed.

    Args:
        checkpoint_monitor: metric for the best checkpoint (``val/miou``, ``val/mask_map``...).
        checkpoint_mode: ``max`` or ``min``.
        checkpoint_dir: where checkpoints go (default: ``<default_root_dir>/checkpoints``).
        **trainer_kwargs: anything ``pl.Trainer`` takes (``max_epochs``, ``precision``, ``gradient_clip_val``...).
    """

    def __init__(self, checkpoint_monitor: str | None = "val/loss", checkpoint_mode: str = "min",
                 checkpoint_dir: str | None = None, callbacks: list[pl.Callback] | None = None, **trainer_kwargs: Any):
        if checkpoint_mode not in ("min", "max"):
            raise ValueError(f"checkpoint_mode must be 'min' or 'max', got {checkpoint_mode!r}")
        callbacks = list(callbacks or [])
        have = lambda t: any(isinstance(c, t) for c in callbacks)  # noqa: E731
        if trainer_kwargs.get("enable_checkpointing", True) and not have(ModelCheckpoint):
            root = trainer_kwargs.get("default_root_dir") or "."
            callbacks.append(ModelCheckpoint(
                dirpath=checkpoint_dir or f"{root}/checkpoints", monitor=checkpoint_monitor, mode=checkpoint_mode,
                filename="best-{epoch:03d}-{step}", save_last=True, save_top_k=1, auto_insert_metric_name=False))
        if trainer_kwargs.get("enable_progress_bar", True) and not have(RichProgressBar):
            callbacks.append(RichProgressBar())
        if trainer_kwargs.get("logger", True) not in (False, None, []) and not have(LearningRateMonitor):
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        self.checkpoint_monitor = checkpoint_monitor
        self.checkpoint_mode = checkpoint_mode
        super().__init__(callbacks=callbacks, **trainer_kwargs)
