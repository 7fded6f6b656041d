"""Semantic segmentation speed on CPU: training images/s and predict latency.

resnet18 + DeepLabV3+ at 128x128, batch 8, beside segmentation_models_pytorch's DeepLabV3Plus with the same timm
encoder (``tu-resnet18``) when smp is installed. Also prints FLOPs per image (torch.utils.flop_counter) against the
machine's measured matmul rate, so the table says how far from the hardware limit each row is.

    python benchmarks/bench_semantic.py [--steps 20] [--threads 2] [--output-stride 16]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autotimm import FeatureBackboneConfig, SemanticSegmentor
from autotimm.losses import CombinedSegmentationLoss


def matmul_rate(dtype=torch.float32, n=2048, reps=5, trials=3) -> float:
    """Best of ``trials`` timings of large square matmuls: the machine's practical FLOP/s ceiling."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def train_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> float:
    with FlopCounterMode(display=False) as fc:
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops() / x.shape[0]


def bench_train(model, x, y, loss_fn, steps, bf16=False, channels_last=False):
    model.train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step():
        with ctx():
            out = model(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * x.shape[0] / (time.perf_counter() - t)


@torch.no_grad()
def bench_predict(model, x, reps, bf16=False, channels_last=False):
    model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    for _ in range(3):
        with ctx():
            model(x).argmax(1)
    t = time.perf_counter()
    for _ in range(reps):
        with ctx():
            model(x).argmax(1)
    return (time.perf_counter() - t) / reps * 1000


class Upsampled(nn.Module):
    """smp returns full-resolution logits already; this keeps both models' outputs identical in shape."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        y = self.m(x)
        return y if y.shape[-2:] == x.shape[-2:] else F.interpolate(y, size=x.shape[-2:], mode="bilinear")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--output-stride", type=int, default=16, help="16 is smp's default for DeepLabV3Plus")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size))
    loss_fn = CombinedSegmentationLoss(args.classes)
    rate32, rate16 = matmul_rate(), matmul_rate(torch.bfloat16)
    print(f"torch {torch.__version__}, {args.threads} threads; matmul: fp32 {rate32 / 1e9:.0f} GFLOP/s, "
          f"bf16 {rate16 / 1e9:.0f} GFLOP/s")

    models = {}
    for os_ in sorted({args.output_stride, 32}, reverse=True):
        models[f"autotimm DeepLabV3+ (OS {os_})"] = SemanticSegmentor(
            FeatureBackboneConfig("resnet18", pretrained=False, output_stride=os_ if os_ != 32 else None),
            num_classes=args.classes, compile_model=False)
    try:
        import segmentation_models_pytorch as smp

        models[f"smp DeepLabV3Plus tu-resnet18 (OS {args.output_stride})"] = Upsampled(smp.DeepLabV3Plus(
            "tu-resnet18", encoder_weights=None, classes=args.classes, encoder_output_stride=args.output_stride))
    except ImportError:
        print("segmentation_models_pytorch not installed: no side-by-side row")

    rows = []
    for name, model in models.items():
        flops = train_flops(model, x, y, loss_fn)
        for mode in ("fp32", "fp32 channels_last", "bf16 autocast channels_last"):
            bf16, cl = "bf16" in mode, "channels_last" in mode
            ips = bench_train(model, x, y, loss_fn, args.steps, bf16=bf16, channels_last=cl)
            ms = bench_predict(model, x[:1], args.steps, bf16=bf16, channels_last=cl)
            util = flops * ips / (rate16 if bf16 else rate32)
            rows.append((name, mode, ips, ms, flops / 1e9, util))
            model.to(memory_format=torch.contiguous_format)

    print(f"\nresnet18 DeepLabV3+, {args.size}x{args.size}, batch {args.batch}, {args.classes} classes, CPU\n")
    print("| model | mode | train img/s | predict ms/img (batch 1) | train GFLOP/img | % of matmul peak |")
    print("|---|---|---:|---:|---:|---:|")
    for name, mode, ips, ms, gf, util in rows:
        print(f"| {name} | {mode} | {ips:.1f} | {ms:.1f} | {gf:.2f} | {100 * util:.0f}% |")


if __name__ == "__main__":
    main()
