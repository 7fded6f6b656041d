"""Instance predict speed, side by side with the public AutoTimm, counting detections first.

    python benchmarks/bench_predict.py                  # this repository (FCOS + head=mask, and head=mask_shared)
    PYTHONPATH=/path/to/autotimm-0.7.37 python benchmarks/bench_predict.py --public
        # the public package (pip download autotimm==0.7.37 --no-deps; unzip the wheel there)

Both run the seed's public API at its spec defaults (ResNet-18, FPN 256, 4 tower convs, Mask R-CNN's 4 x 256 mask
head, 128 px, fp32): 12 training steps on a synthetic batch (``bench_instance.synthetic_batch``), then ``predict`` on
a batch of 8 noise images.

1. As configured (score 0.05, NMS 0.5, up to 100 detections): detections per image and ms per image.
2. At an equal detection count (score threshold 0, NMS off, ``max_detections_per_image`` = N, so every image returns
   exactly N): ms per image and the time of each part (backbone + FPN + detection head, decoding + NMS, mask branch:
   ROI pooling + mask head, pasting the masks into the image), with the mask branch's FLOPs.

Run the two packages alternately (``--rounds``: the script runs its package that many times; run ours, public, ours,
public) and compare the best rows.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from _machine import header, matmul_rate, time_steps
from bench_instance import make_step, synthetic_batch
from torch.utils.flop_counter import FlopCounterMode


def gflops(fn) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def trained(args, public: bool, **kw):
    """The seed API's model at spec defaults after 12 training steps (so scores are not the initial priors)."""
    from autotimm import FeatureBackboneConfig, InstanceSegmentor

    torch.manual_seed(0)
    model = InstanceSegmentor(FeatureBackboneConfig("resnet18", pretrained=False), num_classes=4,
                              compile_model=False, **kw)
    model.log = lambda *a, **k: None
    images, boxes, labels, masks = synthetic_batch(args.batch, args.size)
    if public:
        batch = {"image": images, "boxes": boxes, "labels": labels, "masks": masks}
    else:
        batch = {"image": images, "targets": [{"boxes": b, "labels": lab, "masks": m,
                                               "iscrowd": torch.zeros(len(b), dtype=torch.bool)}
                                              for b, lab, m in zip(boxes, labels, masks)]}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    step = make_step(lambda: model.training_step(batch, 0), opt)
    for _ in range(12):
        step()
    return model.eval()


def set_postprocess(model, public: bool, **values):
    if public:
        for k, v in values.items():
            setattr(model, k, v)
    else:
        model.model.set_postprocess(**values)


def parts_ours(model, x):
    """Callables for each part of our predict (FCOS + RoIMaskHead), on cached inputs."""
    from autotimm.models.fcos import paste_masks, postprocess

    net = model.model
    out = net.features(x)
    img, boxes, scores, labels, probs = net.detections(out)
    h, w = x.shape[-2:]
    rois = torch.cat([img[:, None].to(boxes.dtype), boxes], 1)
    head = net.mask_head

    def mask_branch():
        return head.mask_probs(out["mask_features"], img, boxes, labels)

    return len(img) / x.shape[0], {
        "backbone + FPN + FCOS head (+ shared mask features)": lambda: net.features(x),
        "decode + NMS (postprocess)": lambda: postprocess(
            out["cls"], out["reg"], out["ctr"], out["points"], out["strides"], out["image_size"], net.score_thresh,
            net.nms_thresh, net.max_detections_per_image, net.pre_nms_top_k),
        "mask branch (ROI pooling + mask head)": mask_branch,
        "paste masks at input size": lambda: paste_masks(probs, boxes, h, w) >= net.mask_threshold,
    }, lambda: head(head.pool_rois(out["mask_features"], rois))


def parts_public(model, x):
    """The same parts of the public package's ``InstanceSegmentor.predict`` (read in its tasks/
    instance_segmentation.py): P3 ROIAlign + its MaskHead, and its per-detection paste loop."""
    import torch.nn.functional as F
    from autotimm.tasks._fcos_targets import decode_fcos_detections
    from torchvision import ops

    with torch.inference_mode():
        feats = model.fpn(model.backbone(x))
        cls, reg, ctr = model.detection_head(feats)
        h, w = x.shape[-2:]
        dets = decode_fcos_detections(cls, reg, ctr, model.strides, model.num_classes, (h, w), model.score_thresh,
                                      model.nms_thresh, model.max_detections_per_image)
    rois = torch.cat([torch.cat([torch.full((len(d["boxes"]), 1), float(i)), d["boxes"]], 1)
                      for i, d in enumerate(dets)])
    labels = torch.cat([d["labels"] for d in dets])

    def forward():
        f = model.fpn(model.backbone(x))
        return model.detection_head(f)

    def mask_branch():
        pooled = ops.roi_align(feats[0], rois, (model.roi_pool_size, model.roi_pool_size), 1 / 8, aligned=True)
        logits = model.mask_head(pooled)
        return logits[torch.arange(len(labels)), labels].sigmoid()

    probs = mask_branch()

    def paste():  # its loop over detections, as in its predict
        masks = torch.zeros((len(rois), h, w), dtype=torch.bool)
        for j in range(len(rois)):
            x1 = int(rois[j, 1].floor().clamp(0, w - 1))
            y1 = int(rois[j, 2].floor().clamp(0, h - 1))
            x2 = int(rois[j, 3].ceil().clamp(x1 + 1, w))
            y2 = int(rois[j, 4].ceil().clamp(y1 + 1, h))
            m = F.interpolate(probs[j][None, None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
            masks[j, y1:y2, x1:x2] = m[0, 0] > model.mask_threshold
        return masks

    return len(rois) / x.shape[0], {
        "backbone + FPN + FCOS head (+ shared mask features)": forward,
        "decode + NMS (postprocess)": lambda: decode_fcos_detections(
            cls, reg, ctr, model.strides, model.num_classes, (h, w), model.score_thresh, model.nms_thresh,
            model.max_detections_per_image),
        "mask branch (ROI pooling + mask head)": mask_branch,
        "paste masks at input size": paste,
    }, lambda: model.mask_head(ops.roi_align(feats[0], rois, (model.roi_pool_size,) * 2, 1 / 8, aligned=True))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--public", action="store_true", help="benchmark the public autotimm on PYTHONPATH")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--counts", type=int, nargs="*", default=[1, 100])
    p.add_argument("--mask-heads", action="store_true",
                   help="ours only: head=mask vs head=mask_shared at --counts detections (README table)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import autotimm

    rate = matmul_rate()
    who = f"public autotimm {autotimm.__version__}" if args.public else "autotimm (this repo)"
    print(header("fp32", args.threads, rate))
    print(f"{who}: resnet18, fpn 256, {args.size}x{args.size}, predict on a batch of {args.batch} noise images\n")
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    ctx = torch.inference_mode if args.public else torch.no_grad

    if args.mask_heads:  # batch of one image: what a user predicting pictures one at a time sees
        heads = {"head=mask (Mask R-CNN per-ROI)": {"_target_": "autotimm.heads.MaskHead"},
                 "head=mask_shared": {"_target_": "autotimm.heads.SharedMaskHead"}}
        x1 = x[:1]
        print("batch of 1 image\n")
        print("| mask head | detections / image | predict ms / image | predict GFLOP / image | of which per-ROI mask "
              "branch |")
        print("|---|---:|---:|---:|---:|")
        for name, spec in heads.items():
            model = trained(args, False, mask_head=spec)
            for n in args.counts:
                set_postprocess(model, False, score_thresh=0.0, nms_thresh=1.0, max_detections_per_image=n,
                                pre_nms_top_k=max(1000, n))
                count, _, branch = parts_ours(model, x1)
                with ctx():
                    sec = time_steps(lambda m=model: m.predict(x1), args.steps, warmup=1)
                    g, total = gflops(branch), gflops(lambda m=model: m.predict(x1))
                print(f"| {name} | {count:.0f} | {sec * 1e3:.1f} | {total:.1f} | {g:.1f} |")
        return

    model = trained(args, args.public)
    with ctx():
        preds = model.predict(x)
        sec = time_steps(lambda: model.predict(x), args.steps, warmup=1) / args.batch
    counts = [len(p["boxes"]) for p in preds]
    print("As configured (score 0.05, NMS 0.5, up to 100 detections):\n")
    print("| package | detections / image (min-max) | predict ms / image |")
    print("|---|---:|---:|")
    print(f"| {who} | {sum(counts) / len(counts):.1f} ({min(counts)}-{max(counts)}) | {sec * 1e3:.1f} |\n")

    for n in args.counts:
        set_postprocess(model, args.public, score_thresh=0.0, nms_thresh=1.0, max_detections_per_image=n)
        with ctx():
            preds = model.predict(x)
            got = [len(p["boxes"]) for p in preds]
            whole = time_steps(lambda: model.predict(x), args.steps, warmup=1) / args.batch
            count, parts, branch = (parts_public if args.public else parts_ours)(model, x)
            g = gflops(branch) / args.batch
            print(f"At {n} detection(s) per image (got {min(got)}-{max(got)}): predict {whole * 1e3:.1f} ms / image; "
                  f"mask branch {g:.1f} GFLOP / image\n")
            print("| part | ms / image | share |")
            print("|---|---:|---:|")
            rows = [(k, time_steps(f, args.steps, warmup=1) / args.batch) for k, f in parts.items()]
            for k, s in rows:
                print(f"| {k} | {s * 1e3:.1f} | {100 * s / whole:.0f}% |")
            print(f"| whole predict | {whole * 1e3:.1f} | 100% |\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        t0 = time.perf_counter()
        main()
        print(f"({time.perf_counter() - t0:.0f} s)")
