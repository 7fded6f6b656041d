"""Semantic segmentation speed on CPU: training images/s and predict latency.

resnet18 + DeepLabV3+ at 128x128, batch 8, beside segmentation_models_pytorch's DeepLabV3Plus with the same timm
encoder (``tu-resnet18``) when smp is installed. Also prints FLOPs per image (torch.utils.flop_counter) against the
machine's measured matmul rate, so the table says how far from the hardware limit each row is.

    python benchmarks/bench_semantic.py [--steps 20] [--threads 2] [--output-stride 16]
    python benchmarks/bench_semantic.py --parts     # fp32 per-part FLOP/time table, ours and smp, and the ceiling
    python benchmarks/bench_semantic.py --parts --widths 128   # also a narrower ASPP + decoder (paper: 256)

``--parts`` times each part of one fp32 training step (encoder, decoder, upsample + loss, optimizer) for both models
and prints the highest autotimm / smp ratio any decoder could give: smp's whole step over ours without a decoder.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time

import torch
import torch.nn.functional as F
from _machine import header, matmul_rate, native_bf16, time_steps
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autotimm import FeatureBackboneConfig, SemanticSegmentor
from autotimm.heads import DeepLabV3PlusHead
from autotimm.losses import CombinedSegmentationLoss


def train_flops(model: nn.Module, x: torch.Tensor) -> float:
    """Training FLOPs per image: 3 x the forward's (backward = input grad + weight grad, each one forward's worth).
    Counted on the forward only because ``FlopCounterMode`` over-counts the backward of grouped convolutions (a 64-group
    depthwise conv's backward is counted 65x its forward), and both DeepLabV3+ heads use depthwise-separable convs."""
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return 3 * fc.get_total_flops() / x.shape[0]


def bench_train(model, x, y, loss_fn, steps, bf16=False, channels_last=False):
    """A training step as each library's user gets it: autotimm through its task (``training_step`` and the
    optimizer from ``configure_optimizers``), smp through a plain loop with ``torch.optim.AdamW``; same loss."""
    model.train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    if isinstance(model, SemanticSegmentor):
        model.log = lambda *a, **k: None  # no Trainer attached
        model.criterion = loss_fn
        out = model.configure_optimizers()
        opt = out["optimizer"] if isinstance(out, dict) else out
        forward_loss = lambda: model.training_step({"image": x, "mask": y}, 0)  # noqa: E731
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        forward_loss = lambda: loss_fn(model(x).float(), y)  # noqa: E731

    def step():
        with ctx():
            loss = forward_loss()
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


def parts_table(models: dict, x, y, loss_fn, steps: int, rate: float) -> None:
    """fp32, per image: training FLOPs (3 x forward, see ``train_flops``) and time (forward + backward on detached
    inputs) of the encoder, the decoder (with the 1x1 classifier), the upsample + loss and the optimizer step, next
    to the whole step, for each model; then the ratio ceiling: smp's step over autotimm's step minus its decoder."""
    B = x.shape[0]

    def split(model):
        if isinstance(model, SemanticSegmentor):
            return model.model.backbone, model.model.head, model
        return model.m.encoder, lambda feats: model.m.segmentation_head(model.m.decoder(feats)), model

    print(f"\nper part, one fp32 training step (batch {B}, {x.shape[-1]} px; per image):\n")
    print("| model | part | GFLOP / image | ms / image | achieved GFLOP/s | vs matmul rate | share of step |")
    print("|---|---|---:|---:|---:|---:|---:|")
    steps_sec = {}
    for name, model in models.items():
        model.train()
        encoder, decoder, whole = split(model)
        with torch.no_grad():
            feats = [f.detach() for f in encoder(x)]
            logits = decoder(feats).detach()

        def enc(encoder=encoder):
            out = encoder(x)
            sum(f.float().mean() for f in out).backward()

        def dec(decoder=decoder, feats=feats):
            leaves = [f.clone().requires_grad_() for f in feats]
            decoder(leaves).float().mean().backward()

        def loss(logits=logits):
            z = logits.clone().requires_grad_()
            loss_fn(F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False), y).backward()

        params = [p for p in whole.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        for p_ in params:
            p_.grad = torch.zeros_like(p_)

        def step(opt=opt):
            opt.step()

        def count(fn, *args):
            with FlopCounterMode(display=False) as fc, torch.no_grad():
                fn(*args)
            return 3 * fc.get_total_flops() / B

        whole_sec = 1 / max(bench_train(whole, x, y, loss_fn, steps) for _ in range(2))  # seconds per image
        rows = [("encoder", count(encoder, x), time_steps(enc, steps) / B),
                ("decoder + classifier", count(decoder, feats), time_steps(dec, steps) / B),
                ("upsample + loss", 0.0, time_steps(loss, steps) / B),
                ("optimizer step", 0.0, time_steps(step, steps) / B)]
        rows.append(("whole training step", sum(r[1] for r in rows), whole_sec))
        for part, gf, sec in rows:
            util = f"{100 * gf / sec / rate:.0f}%" if gf else ""
            print(f"| {name} | {part} | {gf / 1e9:.2f} | {sec * 1e3:.1f} | {gf / sec / 1e9:.0f} | {util} | "
                  f"{100 * sec / whole_sec:.0f}% |")
        steps_sec[name] = (whole_sec, rows[1][2])
        for p_ in params:
            p_.grad = None
    ours = [k for k in steps_sec if k.startswith("autotimm")]
    smp_name = next((k for k in steps_sec if k.startswith("smp")), None)
    if smp_name:
        print()
        for name in ours:
            step_s, dec_s = steps_sec[name]
            print(f"{name}: {steps_sec[smp_name][0] / step_s:.2f}x smp; ceiling with a free decoder "
                  f"{steps_sec[smp_name][0] / max(step_s - dec_s, 1e-9):.2f}x")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--output-stride", type=int, default=16, help="16 is smp's default for DeepLabV3Plus")
    p.add_argument("--repeats", type=int, default=3, help="interleaved trials per row; the best is reported")
    p.add_argument("--parts", action="store_true", help="only the fp32 per-part table at --output-stride")
    p.add_argument("--widths", type=int, nargs="*", default=[],
                   help="also our DeepLabV3+ with aspp_channels = decoder_channels = each width (the paper's: 256)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size))
    loss_fn = CombinedSegmentationLoss(args.classes)
    # bf16 rows only where the CPU runs bf16 natively: elsewhere oneDNN emulates it, far slower than fp32 (the 2048^2
    # bf16 matmul alone took over 10 minutes with the ISA capped at AVX2), and precision: auto picks fp32 there anyway
    bf16_rows = native_bf16() and not args.parts
    rate32 = matmul_rate()
    rate16 = matmul_rate(torch.bfloat16) if bf16_rows else float("nan")
    print(header("fp32" if args.parts else "per row (fp32 rows are what a CPU without bf16 gets)", args.threads,
                 rate32))
    if bf16_rows:
        print(f"matmul: fp32 {rate32 / 1e9:.0f} GFLOP/s, bf16 {rate16 / 1e9:.0f} GFLOP/s")
    elif not args.parts:
        print("no native bf16 on this CPU: fp32 rows only")

    models = {}
    for os_ in sorted({args.output_stride, 32}, reverse=True):
        models[f"autotimm DeepLabV3+ (OS {os_})"] = SemanticSegmentor(
            FeatureBackboneConfig("resnet18", pretrained=False, output_stride=os_ if os_ != 32 else None),
            num_classes=args.classes, compile_model=False)
    for w in args.widths:
        models[f"autotimm DeepLabV3+ (OS {args.output_stride}, width {w})"] = SemanticSegmentor(
            FeatureBackboneConfig("resnet18", pretrained=False, output_stride=args.output_stride),
            num_classes=args.classes, compile_model=False,
            head=functools.partial(DeepLabV3PlusHead, aspp_channels=w, decoder_channels=w))
    try:
        import segmentation_models_pytorch as smp

        models[f"smp DeepLabV3Plus tu-resnet18 (OS {args.output_stride})"] = Upsampled(smp.DeepLabV3Plus(
            "tu-resnet18", encoder_weights=None, classes=args.classes, encoder_output_stride=args.output_stride))
    except ImportError:
        print("segmentation_models_pytorch not installed: no side-by-side row")

    if args.parts:
        parts_table({k: v for k, v in models.items() if k.startswith("smp") or f"OS {args.output_stride}" in k},
                    x, y, loss_fn, args.steps, rate32)
        return
    modes = ("fp32", "fp32 channels_last") + (("bf16 autocast channels_last",) if bf16_rows else ())
    flops = {name: train_flops(model, x) for name, model in models.items()}
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for _ in range(args.repeats):  # interleaved trials, best of each: robust to drift and noise on a shared machine
        for name, model in models.items():
            for mode in modes:
                bf16, cl = "bf16" in mode, "channels_last" in mode
                ips = bench_train(model, x, y, loss_fn, args.steps, bf16=bf16, channels_last=cl)
                ms = bench_predict(model, x[:1], args.steps, bf16=bf16, channels_last=cl)
                model.to(memory_format=torch.contiguous_format)
                old_ips, old_ms = best.get((name, mode), (0.0, float("inf")))
                best[(name, mode)] = (max(old_ips, ips), min(old_ms, ms))
    rows = [(name, mode, ips, ms, flops[name] / 1e9) for (name, mode), (ips, ms) in best.items()]

    print(f"\nresnet18 DeepLabV3+, {args.size}x{args.size}, batch {args.batch}, {args.classes} classes, CPU\n")
    print("| model | mode | train img/s | predict ms/img (batch 1) | train GFLOP/img | achieved GFLOP/s | "
          "vs matmul rate |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, mode, ips, ms, gf in rows:
        rate = rate16 if "bf16" in mode else rate32
        util = 100 * gf * ips * 1e9 / rate
        print(f"| {name} | {mode} | {ips:.1f} | {ms:.1f} | {gf:.2f} | {gf * ips:.0f} | {util:.0f}% |")
    smp_rows = {m: ips for n, m, ips, _, _ in rows if n.startswith("smp")}
    if smp_rows:
        print("\nautotimm / smp training throughput, same mode:")
        for name, mode, ips, _, _ in rows:
            if name.startswith("autotimm") and mode in smp_rows:
                print(f"  {name}, {mode}: {ips / smp_rows[mode]:.2f}x")


if __name__ == "__main__":
    main()
