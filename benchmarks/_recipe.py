"""What the equal-wall-clock benchmarks (bench_camvid, bench_dsb2018) share: composing a recipe from conf/, and
calibrating how long a training step takes on real batches, to lay a schedule over a time budget."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]):
    """``conf/train.yaml`` with ``overrides``, as ``python train.py`` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def calibrate(task, dm, loss_of, steps: int = 40, warmup: int = 4) -> tuple[float, int]:
    """Seconds per training step on real batches (data loading included), on a throw-away copy of the task, and the
    steps per epoch. ``loss_of(task, batch)`` is the step's loss.

    ``warmup`` steps first, untimed: the loader's workers start and oneDNN builds its kernels there; then ``steps``
    timed ones (at most an epoch's: 40 are about an epoch of CamVid). With 2 warm-up and 8 timed steps the estimate
    ran from 5% under to 21% over the fit's own steps, one run to the next; with 40 it ran 8% (ours) and 12% (smp)
    over, side by side, so both stop a little early by a similar share (README "CamVid")."""
    model = copy.deepcopy(task).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    steps = max(1, min(steps, len(loader)))
    it = iter(loader)
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        loss = loss_of(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps, len(loader)


def training_callbacks(cfg) -> list:
    """The recipe's callbacks that change what is trained (Lightning's weight averaging: ``callbacks.ema``), built
    from ``cfg.callbacks``; the ones that only write or print (checkpoints, progress) stay out of a timed run."""
    from hydra.utils import get_class, instantiate
    from pytorch_lightning.callbacks import WeightAveraging

    keep = []
    for name, spec in (cfg.get("callbacks") or {}).items():
        if spec is not None and "_target_" in spec and issubclass(get_class(spec._target_), WeightAveraging):
            keep.append(instantiate(spec))
            print(f"callbacks.{name}: {spec._target_} kept", flush=True)
    return keep


def budget_trainer(which: str, step_s: float, steps_per_epoch: int, minutes: float, precision, seed: int,
                   callbacks=(), epochs: int | None = None):
    """A Lightning trainer for ``minutes`` of training: as many whole epochs as the calibrated step time fits (3%
    spared for epoch ends; ``epochs`` given: that many, when a short calibration misjudges the pace) and
    ``max_time`` as the hard stop; no validation, checkpoints or loggers in the budget."""
    import math

    import pytorch_lightning as pl

    fits = max(1, math.floor(minutes * 60 * 0.97 / (step_s * steps_per_epoch)))
    print(f"[{which}] {step_s:.3f} s/step x {steps_per_epoch} steps/epoch -> {fits} epochs in {minutes} min"
          + (f"; {epochs} epochs as given (--epochs)" if epochs else ""), flush=True)
    if epochs and epochs > fits:
        print(f"[{which}] WARNING: --epochs {epochs} but about {fits} fit in --minutes {minutes}: max_time will stop "
              f"the run early (its table says epochs done / planned); raise --minutes to finish the schedule",
              flush=True)
    epochs = epochs or fits
    pl.seed_everything(seed, workers=True)
    return pl.Trainer(max_epochs=epochs, max_time={"minutes": minutes}, precision=precision, accelerator="cpu",
                      devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, check_val_every_n_epoch=10**6, num_sanity_val_steps=0,
                      callbacks=list(callbacks))


def budget_args(p, name: str, baseline: str):
    """The options both equal-wall-clock benchmarks take (after their own ``--data``): budget, models, threads,
    precision, seed, output folder, ``--table`` and extra Hydra overrides."""
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock training budget per model")
    p.add_argument("--models", default=f"ours,{baseline}", help=f"ours, {baseline} or both (comma-separated)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="32", help="Lightning precision (32: what a CPU without bf16 runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None,
                   help="planned epochs (the cosine schedule's length) instead of the calibrated estimate")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / name, help="per-run JSON files")
    p.add_argument("--table", type=Path, default=None, help="only print the table of the JSON files in this folder")
    p.add_argument("override", nargs="*", help="extra Hydra overrides of the recipe (both models)")
    return p
