"""Callbacks the library adds on top of Lightning's."""

from __future__ import annotations

import logging
import re
import time

import pytorch_lightning as pl
import torch

log = logging.getLogger("autotimm")


class EpochSummary(pl.Callback):
    """Logs one line per validation epoch (``epoch 3 | 41.2s | val/loss 0.61 | val/miou 0.52 ...``), so a run's
    progress is readable in log files and CI, where the live progress bar does not render; and logs
    ``train/img_per_s`` each epoch (training steps only: forward, backward, optimizer; data loading excluded)."""

    # headline metrics only: COCO size breakdowns and low-max-dets recalls stay in the logger
    SKIP = re.compile(r"_(small|medium|large|per_class)$|_mar_(1|10)$|_step$|^train/loss_")

    def __init__(self, prefixes: tuple[str, ...] = ("val/", "train/loss", "train/img_per_s")):
        self.prefixes = prefixes
        self._t0 = None
        self._batch_t = 0.0
        self._seconds, self._images = 0.0, 0

    def on_train_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    # training throughput: images per second of the training steps (forward, backward, optimizer; no data loading)
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch_t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._seconds += time.perf_counter() - self._batch_t
        image = batch.get("image") if isinstance(batch, dict) else None
        self._images += int(image.shape[0]) if isinstance(image, torch.Tensor) else 0

    def on_train_epoch_end(self, trainer, pl_module):
        if self._seconds > 0 and self._images:
            pl_module.log("train/img_per_s", self._images / self._seconds, on_step=False, on_epoch=True)
        self._seconds, self._images = 0.0, 0

    def on_validation_end(self, trainer, pl_module):
        # after the module's own epoch-end hook, which logs metrics such as mAP
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        parts = []
        for k, v in sorted(trainer.callback_metrics.items()):
            if k.startswith(self.prefixes) and not self.SKIP.search(k):
                v = v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v
                if isinstance(v, float):
                    parts.append(f"{k} {v:.4f}")
        elapsed = time.perf_counter() - self._t0 if self._t0 else 0.0
        log.info("epoch %d | step %d | %.1fs | %s", trainer.current_epoch, trainer.global_step, elapsed,
                 " | ".join(parts))


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class ProgressLog(pl.Callback):
    """One log line at least every ``every_s`` seconds of training (and after the first step), through the logging
    module, so it reaches the run's log file and a Slurm job's output whether or not a terminal is attached (the
    progress bar draws only in a terminal): ``epoch 3/20 | step 120/400 (30%) | 2.1 img/s | loss 0.5321 |
    elapsed 4:10 | ETA 12:30``. img/s counts the images trained since the last line over the wall time since then
    (loading and validation included); the ETA extrapolates the whole run's pace."""

    def __init__(self, every_s: float = 60.0):
        self.every_s = float(every_s)
        self._start = self._last = 0.0
        self._images = 0
        self._logged_once = False

    def on_train_start(self, trainer, pl_module):
        self._start = self._last = time.perf_counter()
        self._images, self._logged_once = 0, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        image = batch.get("image") if isinstance(batch, dict) else batch if isinstance(batch, torch.Tensor) else None
        self._images += int(image.shape[0]) if isinstance(image, torch.Tensor) else 0
        now = time.perf_counter()
        if self._logged_once and now - self._last < self.every_s:
            return
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        total = trainer.estimated_stepping_batches
        total = int(total) if total not in (None, float("inf")) else None
        elapsed = now - self._start
        loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}" if trainer.max_epochs and
                 trainer.max_epochs > 0 else f"epoch {trainer.current_epoch + 1}"]
        parts.append(f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}")
        parts.append(f"{self._images / max(now - self._last, 1e-9):.2f} img/s")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            parts.append(f"loss {float(loss):.4f}")
        parts.append(f"elapsed {_clock(elapsed)}")
        if total and step:
            parts.append(f"ETA {_clock(elapsed / step * (total - step))}")
        log.info(" | ".join(parts))
        self._last, self._images, self._logged_once = now, 0, True
