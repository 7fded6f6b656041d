"""CamVid from scratch at equal wall-clock: the ``experiment=camvid`` recipe against smp's DeepLabV3Plus.

Both contestants train through the same autotimm training step (the same data module and augmentation, the recipe's
CE + Dice, AdamW + cosine, lr and batch), so only the network differs: ours is the recipe's model (DeepLabV3+ on
ResNet-18, output stride 16; ``experiment=camvid``: half width, 128-channel ASPP and decoder); smp's is
``smp.DeepLabV3Plus("tu-resnet18")`` with its defaults (encoder output stride 16, decoder 256 channels, atrous rates
12/24/36), no pretrained weights. Each gets the same budget of wall-clock minutes: a calibration (44 training steps
on real batches, the recipe's training loss, an auxiliary head's included; excluded from the budget) sets how many
epochs fit, the cosine schedule is laid over them, and Lightning's ``max_time`` stops a run that would overrun.
Validation runs once, after training, on the val split scored at the original 480x360 (CamVid's test split is not
shipped here); ``--tta`` also scores ours multi-scale + flip (mmseg's 0.5-1.75 scales). A recipe's weight averaging
(``+callbacks.ema._target_=pytorch_lightning.callbacks.EMAWeightAveraging``) is kept in the timed run; its other
callbacks (checkpoints, progress) are not.

    python benchmarks/bench_camvid.py --minutes 30                  # both, one after the other, 2 threads each
    python benchmarks/bench_camvid.py --minutes 60 --experiment camvid_60min    # the 60-minute recipe
    python benchmarks/bench_camvid.py --models ours --threads 1 --out /tmp/bc &   # or side by side, one core each
    python benchmarks/bench_camvid.py --models smp --threads 1 --out /tmp/bc; python benchmarks/bench_camvid.py \\
        --table /tmp/bc

fp32 unless ``--precision`` says otherwise (many CPUs have no bf16); the header gives the CPU's capability.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import header  # noqa: E402
from _recipe import ROOT, budget_args, budget_trainer, calibrate, compose, training_callbacks  # noqa: E402


class SmpNet(nn.Module):
    """smp's DeepLabV3Plus behind autotimm's model contract: ``backbone`` (with the timm ``body`` whose pretrained
    config gives mean/std, and ``output_stride``), ``head``, logits at the input resolution."""

    def __init__(self, num_classes: int, encoder: str = "tu-resnet18"):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.DeepLabV3Plus(encoder, encoder_weights=None, classes=num_classes)

    @property
    def backbone(self):
        enc = self.net.encoder
        enc.__dict__.setdefault("body", enc.model)  # not a second registration: plain attribute
        return enc

    @property
    def head(self):
        return self.net.decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # smp refuses sides not divisible by the encoder's output stride (360 px squares in the 60-minute recipe):
        # zero-pad bottom/right (the normalised mean) and crop the logits back, as smp's error message advises
        h, w = x.shape[-2:]
        m = 16
        x = nn.functional.pad(x, (0, -w % m, 0, -h % m))
        return self.net(x)[..., :h, :w]


def build(cfg, which: str, seed: int):
    from hydra.utils import instantiate

    torch.manual_seed(seed)
    dm = instantiate(cfg.dataset)
    if which == "ours":
        task = instantiate(cfg.model)
    else:
        task = instantiate(cfg.model, model=SmpNet(int(cfg.dataset.num_classes)))
    return dm, task


def forward_gflops(task, size: int) -> float:
    """Forward FLOPs of one size x size image (torch.utils.flop_counter); training costs about 3x."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(task.model).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def run(which: str, args, out: Path) -> dict:

    from autotimm.tta import TTA

    overrides = [f"experiment={args.experiment}", f"dataset.data_dir={args.data}",
                 f"trainer.precision={args.precision}", f"seed={args.seed}", *args.override]
    cfg = compose(overrides)
    dm, task = build(cfg, which, args.seed)
    train_size = int(cfg.dataset.crop_size or cfg.dataset.image_size)  # the square a training step sees
    step_s, steps_per_epoch = calibrate(task, dm, lambda m, b: m.training_loss(b["image"], b["mask"])[0])
    trainer = budget_trainer(which, step_s, steps_per_epoch, args.minutes, args.precision, args.seed,
                             callbacks=training_callbacks(cfg), epochs=args.epochs)
    epochs = trainer.max_epochs
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    fit_min = (time.perf_counter() - t0) / 60
    res = {"model": which, "epochs_planned": epochs, "epochs_done": int(trainer.current_epoch),
           "fit_min": round(fit_min, 2), "s_per_step": round(step_s, 3), "threads": torch.get_num_threads(),
           "precision": str(args.precision), "seed": args.seed, "overrides": overrides,
           "gflops_160": round(forward_gflops(task, 160), 2), "train_size": train_size,
           "gflops_train": round(forward_gflops(task, train_size), 2)}
    res["val"] = {k: float(v) for k, v in trainer.validate(task, datamodule=dm, verbose=False)[0].items()}
    if args.tta and which == "ours":
        task.set_tta(TTA(scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True), ["val"])
        res["val_msflip"] = {k: float(v) for k, v in trainer.validate(task, datamodule=dm, verbose=False)[0].items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{which}_seed{args.seed}.json").write_text(json.dumps(res, indent=1))
    return res


def table(results: list[dict]) -> str:
    names = sorted({k[len("val/iou_"):] for r in results for k in r["val"] if k.startswith("val/iou_")})
    cols = ["val mIoU", "pixel acc", "GFLOPs/img 160", "GFLOPs/crop (px)", "epochs", "fit min", "threads"] + names
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in results:
        rows = [(r["model"], r["val"])]
        if "val_msflip" in r:
            rows.append((r["model"] + " ms+flip", r["val_msflip"]))
        for name, v in rows:
            cells = [f"{v['val/miou']:.3f}", f"{v['val/pixel_acc']:.3f}", f"{r['gflops_160']:.2f}",
                     f"{r.get('gflops_train', r['gflops_160']):.2f} ({r.get('train_size', 160)})",
                     f"{r['epochs_done']}/{r['epochs_planned']}",
                     f"{r['fit_min']:.1f}", str(r["threads"])] + [f"{v.get('val/iou_' + n, float('nan')):.3f}"
                                                                 for n in names]
            lines.append(f"| {name} (seed {r['seed']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "camvid",
                   help="the camvid folder (train/, trainannot/, val/, valannot/)")
    p.add_argument("--experiment", default="camvid", help="the recipe both train with (camvid, camvid_60min)")
    p.add_argument("--tta", action="store_true", help="also score ours multi-scale (0.5-1.75) + flip")
    budget_args(p, "bench_camvid", "smp")
    args = p.parse_args()
    if args.table is not None:
        print(table([json.loads(f.read_text()) for f in sorted(args.table.glob("*.json"))]))
        return
    if not (args.data / "train").is_dir():
        raise SystemExit(f"--data {args.data}: no train/ folder (CamVid in SegNet's layout expected)")
    args.data = args.data.resolve()
    print(header(f"{args.precision} (Lightning)", args.threads))
    results = []
    for which in [m.strip() for m in args.models.split(",") if m.strip()]:
        if which not in ("ours", "smp"):
            raise SystemExit(f"--models: unknown {which!r}; valid: ours, smp")
        if which == "smp":
            try:
                import segmentation_models_pytorch  # noqa: F401
            except ImportError:
                print("segmentation_models_pytorch is not installed: no smp row")
                continue
        results.append(run(which, args, args.out))
    print(table(results))


if __name__ == "__main__":
    main()
