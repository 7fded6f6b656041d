"""Cost of every semantic head in conf/head/ (discovered, not listed) on one backbone.

Prints parameters (whole model and head), forward GFLOPs per image (``torch.utils.flop_counter``) and training
images/s (forward + backward + AdamW step, synthetic batch) in fp32 at 128x128, batch 8, on this CPU. Quality
comes from training: ``python train.py experiment=ablate_heads`` and ``python -m autotimm.report <sweep dir>``.

    python benchmarks/bench_heads.py [--backbone resnet18] [--size 128] [--batch 8] [--steps 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from _machine import header, time_steps  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf" / "head"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    from autotimm import FeatureBackboneConfig, SemanticSegmentor
    from autotimm.heads import RoIMaskHead

    torch.set_num_threads(args.threads)
    print(header("fp32", args.threads))
    print(f"{args.backbone}, {args.size}x{args.size}, batch {args.batch}\n")
    print("| head | params (M) | head params (M) | GFLOPs / image | train img/s |")
    print("|---|---:|---:|---:|---:|")
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 5, (args.batch, args.size, args.size))
    for f in sorted(CONF.glob("*.yaml")):
        spec = OmegaConf.to_container(OmegaConf.load(f))
        if issubclass(get_class(spec["_target_"]), RoIMaskHead):
            continue
        torch.manual_seed(0)
        model = SemanticSegmentor(FeatureBackboneConfig(args.backbone, pretrained=False), num_classes=5, head=spec,
                                  compile_model=False)
        model.log = lambda *a, **k: None
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model.eval()(x[:1])
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt):
            loss = model.training_step({"image": x, "mask": y}, 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        sec = time_steps(step, args.steps, warmup=2, trials=2)
        total = sum(q.numel() for q in model.parameters()) / 1e6
        head = sum(q.numel() for q in model.head.parameters()) / 1e6
        print(f"| {f.stem} | {total:.2f} | {head:.2f} | {counter.get_total_flops() / 1e9:.2f} | "
              f"{args.batch / sec:.1f} |", flush=True)


if __name__ == "__main__":
    main()
