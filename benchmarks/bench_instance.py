"""Instance segmentation speed on CPU.

Prints training images/s (resnet18, 128x128, batch 8), FCOS target-assignment time per image with 50 boxes, and
predict time per image with 1 and with 100 detections.

    python benchmarks/bench_instance.py                 # this repository's InstanceSegmentor
    python benchmarks/bench_instance.py --archs         # FCOS vs Mask R-CNN as experiment=ablate_instance_arch
    /path/to/venv/bin/python benchmarks/bench_instance.py --public
        # the public AutoTimm (pip install autotimm==0.7.37 in a separate virtual environment): training row only

The batch is synthetic (3 rectangles/ellipses per image, 4 classes) and built here, so both packages see the same
inputs.
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
import torch
from _machine import header, matmul_rate, native_bf16, time_steps
from torch.utils.flop_counter import FlopCounterMode


def synthetic_batch(batch: int, size: int, per_image: int = 3, num_classes: int = 4, seed: int = 0,
                    extent: tuple[float, float] = (1 / 8, 1 / 3)):
    """Random ellipses and rectangles, ``per_image`` per image, sides between ``extent`` fractions of ``size``."""
    rng = np.random.default_rng(seed)
    lo, hi = max(2, int(size * extent[0])), max(3, int(size * extent[1]))
    images = torch.randn(batch, 3, size, size)
    boxes, labels, masks = [], [], []
    yy, xx = np.mgrid[:size, :size]
    for _ in range(batch):
        b, lab, m = [], [], []
        for _ in range(per_image):
            w, h = rng.integers(lo, hi, 2)
            x, y = rng.integers(0, size - w), rng.integers(0, size - h)
            mk = ((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2 <= 1 if rng.random() < 0.5 \
                else (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + h)
            ys, xs = np.nonzero(mk)
            b.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            lab.append(int(rng.integers(0, num_classes)))
            m.append(mk)
        boxes.append(torch.tensor(b, dtype=torch.float32))
        labels.append(torch.tensor(lab))
        masks.append(torch.from_numpy(np.stack(m)).to(torch.uint8))
    return images, boxes, labels, masks


def make_step(forward_loss, opt, ctx=contextlib.nullcontext):
    def step():
        with ctx():
            loss = forward_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_public(args):
    import autotimm
    from autotimm import FeatureBackboneConfig, InstanceSegmentor

    model = InstanceSegmentor(FeatureBackboneConfig("resnet18", pretrained=False), num_classes=4,
                              compile_model=False)
    model.log = lambda *a, **k: None
    images, boxes, labels, masks = synthetic_batch(args.batch, args.size)
    batch = {"image": images, "boxes": boxes, "labels": labels, "masks": masks}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    sec = time_steps(make_step(lambda: model.training_step(batch, 0), opt), args.steps)
    print(f"| public autotimm {autotimm.__version__} (fpn 256, 4 convs, compile off) | fp32 | "
          f"{args.batch / sec:.1f} |")


def fwd_bwd(fn, *inputs):
    """A callable running ``fn`` on fresh leaf copies of ``inputs`` and back-propagating the sum of its outputs."""
    def run():
        leaves = [t.detach().requires_grad_(t.is_floating_point()) if torch.is_tensor(t) else t for t in inputs]
        out = fn(*leaves)
        flat = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else [out]
        total = sum(o.float().mean() for o in flat if torch.is_tensor(o) and o.requires_grad)
        if torch.is_tensor(total):
            total.backward()

    return run


def train_flops_of(run) -> float:
    with FlopCounterMode(display=False) as fc:
        run()
    return fc.get_total_flops()


def parts_table(model, images, targets, steps: int, rate: float):
    """Training FLOPs (forward + backward, ``torch.utils.flop_counter``) and time (forward + backward) of each part
    of ``FCOSInstanceModel``'s training step, each on detached inputs, against the machine's fp32 matmul rate."""
    from autotimm.models.fcos import assign_targets, decode_boxes, pad_targets

    m = model.model
    B = images.shape[0]
    with torch.no_grad():
        feats = m.backbone(images)
        pyramid = m.fpn(feats)
        out = m.features(images)
    levels = list(pyramid.values())
    names = list(pyramid.keys())
    gt = pad_targets(targets, "cpu")

    def assign():
        return assign_targets(out["points"], out["strides"], out["ranges"], *gt, m.center_radius)

    pos, labels, boxes_t, ctr_t = assign()
    C = m.num_classes
    cls_t = torch.nn.functional.one_hot(labels, C).float() * pos[..., None]
    rois = [t["boxes"].float() for t in targets]
    mask_feats = m.mask_head.features(pyramid)
    logits, mask_t, mask_labels = m._mask_inputs(mask_feats, targets)

    def loss(cls, reg, ctr, mlog):
        pred = decode_boxes(out["points"], out["strides"], reg)
        return m.criterion(cls.reshape(-1, C), pred.reshape(-1, 4), ctr.reshape(-1), cls_t.reshape(-1, C),
                           boxes_t.reshape(-1, 4), ctr_t.reshape(-1), pos.reshape(-1), mlog, mask_t,
                           mask_labels)["loss"]

    parts = {
        "backbone": fwd_bwd(m.backbone, images),
        "FPN (P3-P7)": fwd_bwd(lambda *fs: m.fpn(list(fs)), *feats),
        "FCOS towers + predictors": fwd_bwd(lambda *ls: m.head(list(ls)), *levels),
        f"mask head ({sum(len(r) for r in rois)} ROIs: ROIAlign + convs)": fwd_bwd(
            lambda *ls: m.mask_head(m.mask_head.pool(m.mask_head.features(dict(zip(names, ls))), rois)), *levels),
        "target assignment (FCOS + mask targets)": lambda: (assign(), m.mask_targets(targets)),
        "losses (focal, GIoU, centerness, mask BCE)": fwd_bwd(loss, out["cls"], out["reg"], out["ctr"], logits),
    }
    opt = model.configure_optimizers()["optimizer"]
    whole = make_step(lambda: model.training_step({"image": images, "targets": targets}, 0), opt)
    print(f"\nper part, one training step (batch {B}, fp32; FLOPs forward + backward, per image):\n")
    print("| part | GFLOP / image | ms / image | achieved GFLOP/s | vs matmul rate | share of time |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for name, run in parts.items():
        flops = train_flops_of(run) / B
        sec = time_steps(run, steps) / B
        rows.append((name, flops, sec))
    step_sec = time_steps(whole, steps) / B
    for name, flops, sec in rows + [("whole training step (incl. optimizer)", sum(r[1] for r in rows), step_sec)]:
        print(f"| {name} | {flops / 1e9:.2f} | {sec * 1e3:.1f} | {flops / sec / 1e9:.0f} | "
              f"{100 * flops / sec / rate:.0f}% | {100 * sec / step_sec:.0f}% |")


def bench_ours(args):
    from autotimm import FeatureBackboneConfig, InstanceSegmentor
    from autotimm.models.fcos import assign_targets, level_ranges, make_points, pad_targets

    images, boxes, labels, masks = synthetic_batch(args.batch, args.size)
    targets = [{"boxes": b, "labels": lab, "masks": m, "iscrowd": torch.zeros(len(b), dtype=torch.bool)}
               for b, lab, m in zip(boxes, labels, masks)]
    batch = {"image": images, "targets": targets}
    print("| model | precision | train img/s |")
    print("|---|---|---:|")
    configs = {"spec defaults (fpn 256, 4 convs)": {},
               "conf/model/instance.yaml (fpn 128, 2 convs)": {"fpn_channels": 128, "head_num_convs": 2}}
    # bf16 rows only where the CPU runs bf16 natively (elsewhere oneDNN emulates it, far slower than fp32)
    precisions = ("fp32", "bf16 autocast + channels_last") if native_bf16() else ("fp32",)
    for name, kw in configs.items():
        for precision in precisions:
            bf16 = precision != "fp32"
            model = InstanceSegmentor(FeatureBackboneConfig("resnet18", pretrained=False), num_classes=4,
                                      channels_last=bf16, **kw)
            model.log = lambda *a, **k: None
            opt = model.configure_optimizers()["optimizer"]
            ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
            step = make_step(lambda model=model: model.training_step(batch, 0), opt, ctx)
            sec = time_steps(step, args.steps)
            print(f"| autotimm (this repo), {name} | {precision} | {args.batch / sec:.1f} |")

    for name, kw in {"spec defaults (fpn 256, 4 tower convs, Mask R-CNN mask head 4 x 256)": {},
                     "experiment=instance_shapes (fpn 128, 2 tower convs, mask head 4 x 128)": {
                         "fpn_channels": 128, "head_num_convs": 2,
                         "mask_head": {"_target_": "autotimm.heads.MaskHead", "conv_channels": 128}}}.items():
        model = InstanceSegmentor(FeatureBackboneConfig("resnet18", pretrained=False), num_classes=4, **kw)
        model.log = lambda *a, **k: None
        print(f"\n{name}, fp32:")
        parts_table(model, images, targets, args.steps, args.rate)

    print("\nFCOS target assignment, 50 boxes, one image (P3-P7):\n")
    print("| image size | locations | ms per image |")
    print("|---:|---:|---:|")
    for size in (128, 640):
        strides = [8, 16, 32, 64, 128]
        sizes = [(-(-size // s), -(-size // s)) for s in strides]
        points, strd, lvl = make_points(sizes, strides)
        ranges = level_ranges(len(strides), lvl)
        rng = np.random.default_rng(0)
        xy = rng.uniform(0, size * 0.8, (50, 2))
        wh = rng.uniform(size * 0.02, size * 0.5, (50, 2))
        b = torch.tensor(np.concatenate([xy, np.minimum(xy + wh, size)], 1), dtype=torch.float32)
        gt = pad_targets([{"boxes": b, "labels": torch.zeros(50, dtype=torch.long)}], "cpu")
        sec = time_steps(lambda p=points, s=strd, r=ranges, g=gt: assign_targets(p, s, r, *g), 50)
        print(f"| {size} | {len(points)} | {sec * 1000:.2f} |")

    bench_mask_heads(args)


MASK_HEADS = {"mask (Mask R-CNN per-ROI, default)": {"_target_": "autotimm.heads.MaskHead"},
              "mask_shared (shared convs)": {"_target_": "autotimm.heads.SharedMaskHead"}}


def bench_mask_heads(args):
    """Predict time with 1 and 100 detections for each mask head, and the per-ROI cost of the mask heads against
    torchvision's ``maskrcnn_resnet50_fpn`` mask branch on the same ROIs."""
    from collections import OrderedDict

    from autotimm import FeatureBackboneConfig, InstanceSegmentor

    print(f"\npredict (batch 1, {args.size}x{args.size}, resnet18, fpn 256, masks pasted at input size):\n")
    print("| mask head | ms, 1 detection | ms, 100 detections | ratio |")
    print("|---|---:|---:|---:|")
    x = torch.randn(1, 3, args.size, args.size)
    for name, spec in MASK_HEADS.items():
        times = {}
        for n in (1, 100):
            model = InstanceSegmentor(FeatureBackboneConfig("resnet18", pretrained=False), num_classes=4,
                                      score_thresh=0.0, max_detections_per_image=n, nms_thresh=1.0,
                                      mask_head=spec).eval()
            assert len(model.predict(x)[0]["boxes"]) == n
            times[n] = time_steps(lambda model=model: model.predict(x), args.steps)
        print(f"| {name} | {times[1] * 1000:.1f} | {times[100] * 1000:.1f} | {times[100] / times[1]:.2f}x |")

    from torchvision.models.detection import maskrcnn_resnet50_fpn

    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5).eval()
    k = 100
    feats = OrderedDict((n, torch.randn(1, 256, args.size // s, args.size // s)) for n, s in
                        (("0", 4), ("1", 8), ("2", 16), ("3", 32)))
    xy = torch.rand(k, 2) * args.size * 0.6
    boxes = torch.cat([xy, xy + 8 + torch.rand(k, 2) * args.size * 0.4], 1)
    roi_heads = tv.roi_heads

    def tv_masks():
        pooled = roi_heads.mask_roi_pool(feats, [boxes], [(args.size, args.size)])
        return roi_heads.mask_predictor(roi_heads.mask_head(pooled))

    print(f"\nmask branch per ROI ({k} ROIs, fpn 256, ROIAlign 14 -> 28x28 logits, no backbone):\n")
    print("| mask branch | ms per ROI |")
    print("|---|---:|")
    with torch.no_grad():
        print(f"| torchvision maskrcnn_resnet50_fpn | {time_steps(tv_masks, args.steps) / k * 1000:.3f} |")
        pyramid = OrderedDict((f"p{i + 3}", f) for i, f in enumerate(list(feats.values())[1:]))
        rois = torch.cat([torch.zeros(k, 1), boxes], 1)
        for name, spec in MASK_HEADS.items():
            model = InstanceSegmentor(FeatureBackboneConfig("resnet18", pretrained=False), num_classes=4,
                                      mask_head=spec).eval()
            head = model.mask_head

            def ours(head=head):
                return head(head.pool_rois(head.features(pyramid), rois))

            print(f"| autotimm {name} | {time_steps(ours, args.steps) / k * 1000:.3f} |")


def dense_model(overrides: list[str] | None = None, experiment: str = "instance_dense"):
    """The model ``python train.py experiment=<experiment>`` trains (composed from conf/, so the benchmark
    measures the recipe as configured), with ``overrides`` on top."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}", "model.compile_model=false",
                                                       *(overrides or [])])
    return instantiate(cfg.model), cfg


def bench_dense(args):
    """experiment=instance_dense's model (composed from the config) at its image size: training with 300 small
    instances per image (6-23 px at 384), and predict with 300 and 1000 detections per image (score threshold 0, so
    the count is exact)."""

    model, cfg = dense_model(args.override)
    size, batch = int(cfg.dataset.image_size), int(cfg.dataset.batch_size)
    net = model.model
    print(f"experiment=instance_dense {' '.join(args.override or [])}: {size}x{size}, batch {batch}, "
          f"backbone stages {net.backbone.channels}, FPN {cfg.arch.fpn_channels}, "
          f"mask head {cfg.head.get('num_convs', 4)} x {cfg.head.conv_channels}, "
          f"mask_rois_per_image {net.mask_rois_per_image}\n")
    images, boxes, labels, masks = synthetic_batch(batch, size, per_image=300, extent=(6 / size, 23 / size))
    targets = [{"boxes": b, "labels": lab, "masks": m, "iscrowd": torch.zeros(len(b), dtype=torch.bool)}
               for b, lab, m in zip(boxes, labels, masks)]
    model.log = lambda *a, **k: None
    opt = model.configure_optimizers()["optimizer"]
    step = make_step(lambda: model.training_step({"image": images, "targets": targets}, 0), opt)
    with FlopCounterMode(display=False) as counter:
        step()
    sec = time_steps(step, max(2, args.steps // 3), warmup=1, trials=2)
    print("| what | value |")
    print("|---|---:|")
    gflop = counter.get_total_flops() / batch / 1e9
    print(f"| train step GFLOP / image (forward + backward, 300 instances) | {gflop:.1f} |")
    print(f"| train img/s | {batch / sec:.2f} |")
    x = torch.randn(1, 3, size, size)
    model.eval()
    for n in (300, 1000):
        net.set_postprocess(score_thresh=0.0, nms_thresh=1.0, max_detections_per_image=n, pre_nms_top_k=max(2000, n))
        got = len(model.predict(x)[0]["boxes"])  # fewer than n only if the untrained boxes clamp to nothing
        t = time_steps(lambda: model.predict(x), max(3, args.steps // 2), warmup=1)
        print(f"| predict ms / image, {got} detections (masks pasted at {size}x{size}) | {t * 1000:.0f} |")


def bench_archs(args):
    """experiment=ablate_instance_arch's two models (experiment=instance_shapes with arch=fcos / arch=maskrcnn,
    composed from conf/) at the recipe's image and batch size: train img/s on a synthetic batch (3 shapes per
    image) and predict ms / image on one image as configured (score 0.05, up to 100 detections), with the count."""
    print("| arch | train GFLOP / image | train img/s | detections / image | predict GFLOP / image | "
          "predict ms / image |")
    print("|---|---:|---:|---:|---:|---:|")
    for arch in ("fcos", "maskrcnn"):
        torch.manual_seed(0)
        model, cfg = dense_model([f"arch={arch}", *args.override], experiment="instance_shapes")
        size, batch = int(cfg.dataset.image_size), int(cfg.dataset.batch_size)
        images, boxes, labels, masks = synthetic_batch(batch, size)
        targets = [{"boxes": b, "labels": lab, "masks": m, "iscrowd": torch.zeros(len(b), dtype=torch.bool)}
                   for b, lab, m in zip(boxes, labels, masks)]
        model.log = lambda *a, **k: None
        opt = model.configure_optimizers()["optimizer"]
        model.train()
        step = make_step(lambda m=model, b={"image": images, "targets": targets}: m.training_step(b, 0), opt)
        for _ in range(args.steps):  # a few steps, so the detections are not the untrained model's
            step()
        with FlopCounterMode(display=False) as counter:
            step()
        train_gflop = counter.get_total_flops() / batch / 1e9
        sec = time_steps(step, max(2, args.steps // 2), warmup=1, trials=2)
        model.eval()
        x = images[:1]
        with torch.no_grad():
            got = len(model.predict(x)[0]["boxes"])
            with FlopCounterMode(display=False) as counter:
                model.predict(x)
            t = time_steps(lambda m=model, x=x: m.predict(x), max(3, args.steps // 2), warmup=1)
        print(f"| {arch} | {train_gflop:.1f} | {batch / sec:.2f} | {got} | {counter.get_total_flops() / 1e9:.1f} | "
              f"{t * 1000:.0f} |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--public", action="store_true", help="benchmark the installed public autotimm instead")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dense", action="store_true", help="only the dense-scene table (experiment=instance_dense)")
    p.add_argument("--archs", action="store_true",
                   help="only the architecture table (experiment=instance_shapes, arch=fcos vs arch=maskrcnn)")
    p.add_argument("--override", nargs="*", default=[], help="--dense / --archs: Hydra overrides on the experiment")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rate = matmul_rate()
    print(header("fp32 unless a row says bf16", args.threads, rate))
    print(f"resnet18, {args.size}x{args.size}, batch {args.batch}\n")
    args.rate = rate
    if args.dense:
        bench_dense(args)
    elif args.archs:
        bench_archs(args)
    elif args.public:
        print("| model | precision | train img/s |")
        print("|---|---|---:|")
        bench_public(args)
    else:
        bench_ours(args)


if __name__ == "__main__":
    main()
