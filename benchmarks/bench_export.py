"""Latency of the exported pipelines against the eager model (CPU): semantic class maps and instance detections.

ResNet-18 DeepLabV3+ and ResNet-18 FCOS + mask head (conf/model/instance.yaml widths: FPN 128, 2 tower convs), batch
1, 2 threads, untrained weights; the instance classifier is biased so every image carries exactly ``--detections``
detections (scores above threshold everywhere, capped by ``max_detections_per_image``), masks pasted at input size.
Exports are written to a temporary folder; each row is the best of ``--trials`` timings of ``--reps`` calls.

    python benchmarks/bench_export.py [--size 128] [--threads 2] [--detections 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _machine import header

from autotimm import FeatureBackboneConfig, InstanceSegmentor, SemanticSegmentor
from autotimm.export import export_model


def best_ms(fn, x, reps: int, trials: int) -> float:
    for _ in range(2):
        fn(x)
    best = float("inf")
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            fn(x)
        best = min(best, (time.perf_counter() - t) / reps)
    return best * 1000


def runners(model, folder: Path, size: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    ts = torch.jit.load(str(export_model(model, folder / "m.pt", "torchscript", size)))
    sess = ort.InferenceSession(str(export_model(model, folder / "m.onnx", "onnx", size)), opts)
    yield "eager (predict)", model.predict
    yield "TorchScript", ts
    yield "onnxruntime", lambda x: sess.run(None, {"images": x.numpy()})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--detections", type=int, default=100)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    bb = FeatureBackboneConfig("resnet18", pretrained=False)
    semantic = SemanticSegmentor(bb, num_classes=21, compile_model=False).eval()
    instance = InstanceSegmentor(bb, num_classes=4, fpn_channels=128, head_num_convs=2, compile_model=False,
                                 score_thresh=0.0, max_detections_per_image=args.detections).eval()
    with torch.no_grad():
        instance.head.cls_logits.bias.fill_(5.0)
    x = torch.randn(1, 3, args.size, args.size)
    n = len(instance.predict(x)[0]["boxes"])
    print(header("fp32 (eager and exported)", args.threads))
    print(f"resnet18, batch 1, {args.size}x{args.size}; "
          f"instance: {n} detections per image\n")
    print("| task | runtime | ms per image |\n|---|---|---:|")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for task, model in (("semantic", semantic), ("instance", instance)):
            folder = Path(tmp) / task
            folder.mkdir()
            for name, fn in runners(model, folder, args.size):
                print(f"| {task} | {name} | {best_ms(fn, x, args.reps, args.trials):.1f} |", flush=True)


if __name__ == "__main__":
    main()
