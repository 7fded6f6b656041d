"""Which timm architectures train and predict with default settings.

A fixed random sample of timm model names (seed 0); those over 150M parameters are left out (counted on the meta
device, nothing allocated). For each of the rest, with ``pretrained=False`` and nothing set by hand:

- both segmentors are built for a training size of 128 (``preprocess={"image_size": 128}``, what the Hydra configs
  pass from ``dataset.image_size``) and take one training step on a batch of 2;
- the semantic model predicts on raw images of two other sizes (90x150 and 200x120) through ``predict_semantic``
  and the instance model through ``predict_instance`` (the validation pipeline: longest side resized, padded);
  each output must have the image's own size.

Prints one row per architecture and the pass rate.

    python benchmarks/bench_backbones.py [--num 100] [--seed 0] [--size 128]
"""

from __future__ import annotations

import argparse
import random
import time
import traceback

import numpy as np
import torch
from _machine import header


def param_count(name: str) -> int:
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return sum(p.numel() for p in model.parameters())


def check(name: str, size: int) -> str:
    from autotimm import FeatureBackboneConfig, InstanceSegmentor, SemanticSegmentor
    from autotimm.inference import predict_instance, predict_semantic

    backbone = FeatureBackboneConfig(name, pretrained=False)
    rng = np.random.default_rng(0)
    raws = [rng.integers(0, 255, (90, 150, 3), dtype=np.uint8), rng.integers(0, 255, (200, 120, 3), dtype=np.uint8)]
    x = torch.randn(2, 3, size, size)
    sem = SemanticSegmentor(backbone, num_classes=3, preprocess={"image_size": size}, compile_model=False)
    sem.log = lambda *a, **k: None
    sem.training_step({"image": x, "mask": torch.randint(0, 3, (2, size, size))}, 0).backward()
    for raw in raws:
        assert predict_semantic(sem, raw).shape == raw.shape[:2], "semantic predict size"
    inst = InstanceSegmentor(backbone, num_classes=3, fpn_channels=64, head_num_convs=1, compile_model=False,
                             preprocess={"image_size": size}, mask_head={"_target_": "autotimm.heads.MaskHead",
                                                                          "conv_channels": 64})
    inst.log = lambda *a, **k: None
    m = torch.zeros(1, size, size, dtype=torch.uint8)
    m[0, 10:60, 20:90] = 1
    t = {"boxes": torch.tensor([[20.0, 10, 90, 60]]), "labels": torch.tensor([1]), "masks": m,
         "iscrowd": torch.zeros(1, dtype=torch.bool)}
    inst.training_step({"image": x, "targets": [t, t]}, 0).backward()
    for raw in raws:
        pred = predict_instance(inst, raw)
        assert pred["masks"].shape[-2:] == raw.shape[:2], "instance predict size"
    return "ok"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--max-params", type=float, default=150e6)
    args = p.parse_args()
    import timm

    torch.set_num_threads(2)
    names = [n for n in timm.list_models() if not n.startswith("test_")]
    sample = sorted(random.Random(args.seed).sample(names, args.num))
    print(header("fp32 (train step and predict)"))
    print(f"{len(names)} architectures, sample of {args.num} (seed {args.seed}), training size {args.size}\n")
    print("| architecture | params (M) | result | s |")
    print("|---|---:|---|---:|")
    ok = tried = 0
    for name in sample:
        try:
            n = param_count(name)
        except Exception as e:  # noqa: BLE001 - reported
            print(f"| {name} | ? | not counted: {type(e).__name__}: {str(e)[:80]} | |")
            continue
        if n > args.max_params:
            print(f"| {name} | {n / 1e6:.0f} | skipped (> {args.max_params / 1e6:.0f}M) | |")
            continue
        tried += 1
        t = time.perf_counter()
        try:
            result = check(name, args.size)
            ok += 1
        except Exception as e:  # noqa: BLE001 - reported
            last = traceback.extract_tb(e.__traceback__)[-1]
            msg = (str(e).splitlines() or [""])[0][:100]
            result = f"FAIL {type(e).__name__}: {msg} ({last.filename.split('/')[-1]}:{last.lineno})"
        print(f"| {name} | {n / 1e6:.1f} | {result} | {time.perf_counter() - t:.1f} |", flush=True)
    print(f"\n{ok} of {tried} architectures under {args.max_params / 1e6:.0f}M parameters train and predict "
          f"({100 * ok / max(1, tried):.0f}%)")


if __name__ == "__main__":
    main()
