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


def calibrate(task, dm, loss_of, steps: int = 8, warmup: int = 2) -> tuple[float, int]:
    """Seconds per training step on real batches (data loading included), on a throw-away copy of the task, and the
    steps per epoch. ``loss_of(task, batch)`` is the step's loss."""
    model = copy.deepcopy(task).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dm.setup("fit")
    loader = dm.train_dataloader()
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
