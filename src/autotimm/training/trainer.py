"""AutoTrainer: a Lightning ``Trainer`` with the callbacks a segmentation run wants by default."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar
from pytorch_lightning.loggers import Logger, WandbLogger

from .callbacks import EpochSummary, ProgressLog
from .checkpoint_io import AtomicCheckpointIO
from .wandb_panels import WandbImagePanels

log = logging.getLogger("autotimm")


def auto_precision(accelerator: str | None = "auto", why: list[str] | None = None) -> str:
    """bf16 autocast where the hardware runs it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), else fp32.
    ``why``, when given, receives a sentence saying which and why."""
    why = why if why is not None else []
    want_cuda = accelerator in (None, "auto", "gpu", "cuda")
    if want_cuda and torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        why.append(f"CUDA device {torch.cuda.get_device_name()} {'supports' if bf16 else 'lacks'} bf16")
        return "bf16-mixed" if bf16 else "16-mixed"
    cap = torch.backends.cpu.get_cpu_capability()
    if accelerator in (None, "auto", "cpu"):
        try:
            if torch.ops.mkldnn._is_mkldnn_bf16_supported():
                why.append(f"CPU ({cap}) runs bf16 natively (AVX512-BF16 or AMX)")
                return "bf16-mixed"
        except (AttributeError, RuntimeError):
            pass
        why.append(f"CPU ({cap}) has no native bf16 (AVX512-BF16/AMX): fp32, about 3x slower than bf16 where "
                   "a CPU has it")
    else:
        why.append(f"accelerator={accelerator!r} without CUDA")
    return "32-true"


class AutoTrainer(pl.Trainer):
    """``pl.Trainer`` plus defaults, each added only if ``callbacks`` has none of its type:

    - ``ModelCheckpoint`` keeping the best checkpoint on ``checkpoint_monitor`` (``best-...ckpt``) and ``last.ckpt``;
    - ``RichProgressBar`` (when the progress bar is enabled);
    - ``EpochSummary``: one log line per validation epoch (readable in log files and CI);
    - ``ProgressLog``: a log line at least every minute of training (epoch, step/total, img/s, loss, ETA), in log
      files and Slurm output, with or without a terminal;
    - ``WandbImagePanels`` (with a ``WandbLogger``, also when ``default_callbacks=False``): validation images with
      prediction / ground-truth overlays.

    Validation always runs after the last epoch (``max_epochs``), also when ``check_val_every_n_epoch`` does not
    divide it (Lightning would skip it: a 1-epoch run with validation every 2 would end without metrics).

    ``default_callbacks=False`` adds none of the first four: the Hydra configs declare them in
    ``conf/callbacks/default.yaml`` instead, so each is declared once. The learning rate is logged by the task
    (``train/lr``, ``LoggingConfig.log_learning_rate``), not by a second logger.

    Checkpoints are written atomically (``AtomicCheckpointIO``) unless another ``CheckpointIO`` plugin is given.
    ``precision="auto"`` picks bf16 autocast where the hardware has it (see ``auto_precision``), else fp32.
    There is no hidden learning-rate finder or other tuning: ``fit`` trains with what you passed.

    Args:
        checkpoint_monitor: metric for the best checkpoint (``val/miou``, ``val/mask_map``...).
        checkpoint_mode: ``max`` or ``min``.
        checkpoint_dir: where checkpoints go (default: ``<default_root_dir>/checkpoints``).
        **trainer_kwargs: anything ``pl.Trainer`` takes (``max_epochs``, ``precision``, ``gradient_clip_val``...).
    """

    def __init__(self, checkpoint_monitor: str | None = "val/loss", checkpoint_mode: str = "min",
                 checkpoint_dir: str | None = None, callbacks: list[pl.Callback] | None = None,
                 default_callbacks: bool = True, **trainer_kwargs: Any):
        if checkpoint_mode not in ("min", "max"):
            raise ValueError(f"checkpoint_mode must be 'min' or 'max', got {checkpoint_mode!r}")
        callbacks = list(callbacks or [])
        def have(t):
            return any(isinstance(c, t) for c in callbacks) or not default_callbacks
        if trainer_kwargs.get("enable_checkpointing", True) and not have(ModelCheckpoint):
            root = trainer_kwargs.get("default_root_dir") or "."
            callbacks.append(ModelCheckpoint(
                dirpath=checkpoint_dir or f"{root}/checkpoints", monitor=checkpoint_monitor, mode=checkpoint_mode,
                filename="best-{epoch:03d}-{step}", save_last=True, save_top_k=1, auto_insert_metric_name=False))
        if trainer_kwargs.get("enable_progress_bar", True) and not have(RichProgressBar):
            callbacks.append(RichProgressBar())
        if not have(EpochSummary):
            callbacks.append(EpochSummary())
        if not have(ProgressLog):
            callbacks.append(ProgressLog())
        loggers = trainer_kwargs.get("logger")
        # a list, or a ListConfig when Hydra passes it
        loggers = [loggers] if loggers is None or isinstance(loggers, (bool, Logger)) else list(loggers)
        if any(isinstance(lg, WandbLogger) for lg in loggers) and \
                not any(isinstance(c, WandbImagePanels) for c in callbacks):
            callbacks.append(WandbImagePanels())
        plugins = list(trainer_kwargs.get("plugins") or [])
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())  # a kill during a save never leaves a truncated checkpoint
        trainer_kwargs["plugins"] = plugins
        accelerator = trainer_kwargs.get("accelerator", "auto")
        on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
        if trainer_kwargs.get("sync_batchnorm") and on_cpu:
            log.warning("sync_batchnorm needs CUDA; on CPU each process keeps its own BatchNorm statistics")
            trainer_kwargs["sync_batchnorm"] = False
        if trainer_kwargs.get("precision") == "auto":
            why: list[str] = []
            trainer_kwargs["precision"] = auto_precision(trainer_kwargs.get("accelerator", "auto"), why)
            log.info("precision: auto -> %s (%s)", trainer_kwargs["precision"], why[0])
        else:
            log.info("precision: %s (as configured; CPU capability %s)", trainer_kwargs.get("precision", "32-true"),
                     torch.backends.cpu.get_cpu_capability())
        callbacks.append(ValidateLastEpoch())
        self.checkpoint_monitor = checkpoint_monitor
        self.checkpoint_mode = checkpoint_mode
        super().__init__(callbacks=callbacks, **trainer_kwargs)


class ValidateLastEpoch(pl.Callback):
    """Makes the last epoch (``max_epochs``) a validation epoch whatever ``check_val_every_n_epoch`` is, so a run
    always ends with metrics and a checkpoint chosen on them. Lightning reads ``check_val_every_n_epoch`` when an epoch
    ends, so setting it to 1 for the last one is enough; it is restored when training ends."""

    def __init__(self):
        self._every = None

    def on_train_epoch_start(self, trainer, pl_module):
        every, last = trainer.check_val_every_n_epoch, trainer.max_epochs
        if every and every > 1 and last and last > 0 and trainer.current_epoch == last - 1 and last % every:
            self._every = every
            trainer.check_val_every_n_epoch = 1

    def on_train_end(self, trainer, pl_module):
        if self._every is not None:
            trainer.check_val_every_n_epoch, self._every = self._every, None
