"""DSB2018 nuclei from scratch at equal wall-clock: ``experiment=dsb2018`` against torchvision's Mask R-CNN.

Both train through the same autotimm training step (the same data module: DSB2018 resized by 2, random 256 px
windows, flips and colour jitter; AdamW + cosine, the recipe's lr and batch), so only the network differs: ours is
the recipe's model (FCOS + Mask R-CNN's mask head on a half-width ResNet-18); torchvision's is ``MaskRCNN`` on
``resnet_fpn_backbone("resnet18", weights=None, trainable_layers=5)`` (P2-P6), from scratch, its defaults otherwise
(2000 / 1000 proposals, 512 ROIs per image), with three changes so it sees what ours sees: up to the recipe's 500
detections per image (its default 100 is under the densest image's 375 nuclei), BatchNorm
instead of the backbone's default FrozenBatchNorm (frozen identity statistics cannot train from scratch) and its
``GeneralizedRCNNTransform`` neither resizing nor re-normalising (the data module has done both). Each gets the same
budget of wall-clock minutes: a short calibration sets how many epochs fit, the cosine schedule is laid over them and
Lightning's ``max_time`` stops a run that would overrun. Validation runs once, after training, on the 100 val images
at their original resolution: COCO mask AP / AP@0.5 (500 detections), the challenge's ``dsb_score`` and
``match_acc_50`` (the detections scoring at least the threshold the recipe's ``ScoreThresholdCalibration`` chose on
32 training images; then, for comparison, a second pass at the metric's fixed 0.5), then predict ms / image.

    python benchmarks/bench_dsb2018.py --minutes 30                 # both, one after the other, 2 threads each
    python benchmarks/bench_dsb2018.py --models ours --threads 1 --out /tmp/bd &    # or side by side, one core each
    python benchmarks/bench_dsb2018.py --models torchvision --threads 1 --out /tmp/bd; \\
        python benchmarks/bench_dsb2018.py --table /tmp/bd

fp32 unless ``--precision`` says otherwise; the header gives the CPU's capability.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import header  # noqa: E402
from _recipe import ROOT, budget_args, budget_trainer, calibrate, compose, training_callbacks  # noqa: E402

from autotimm.models import InstanceModelBase  # noqa: E402


class TorchvisionMaskRCNN(InstanceModelBase):
    """torchvision's ``MaskRCNN`` (ResNet-18 FPN) behind the instance-model contract."""

    postprocess_keys = ("score_thresh", "nms_thresh", "max_detections_per_image", "mask_threshold")
    export_batch_size = 1

    def __init__(self, num_classes: int, mean, std):
        super().__init__()
        from torchvision.models.detection import MaskRCNN
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
        from torchvision.models.detection.transform import GeneralizedRCNNTransform

        class AsGiven(GeneralizedRCNNTransform):  # the data module resized and normalised already
            def normalize(self, image):
                return image

            def resize(self, image, target=None):
                return image, target

            def postprocess(self, result, image_shapes, original_image_sizes):  # masks stay [N, 1, M, M] probs:
                return result  # pasted by ``detect`` (torchvision's float canvas at the input size runs out of memory)

        fpn = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                  norm_layer=nn.BatchNorm2d)
        self.net = MaskRCNN(fpn, num_classes=num_classes + 1)
        self.net.transform = AsGiven(1, 1, [0.0] * 3, [1.0] * 3)
        self.backbone = _TimmLike(fpn.body, mean, std)
        self.mask_threshold = 0.5

    @property
    def score_thresh(self):
        return self.net.roi_heads.score_thresh

    @property
    def nms_thresh(self):
        return self.net.roi_heads.nms_thresh

    @property
    def max_detections_per_image(self):
        return self.net.roi_heads.detections_per_img

    def _set_postprocess_value(self, key, value):
        names = {"score_thresh": "score_thresh", "nms_thresh": "nms_thresh",
                 "max_detections_per_image": "detections_per_img"}
        if key in names:
            setattr(self.net.roi_heads, names[key], value)
        else:
            setattr(self, key, value)

    def forward(self, images, targets=None):
        if targets is not None:
            tv = [{"boxes": t["boxes"].float(), "labels": t["labels"] + 1, "masks": t["masks"]} for t in targets]
            mode = self.net.training
            self.net.train(True)
            for m in self.net.modules():  # losses need the training branches; BatchNorm keeps the caller's mode
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train(mode)
            try:
                return self.net(list(images), tv)
            finally:
                self.net.train(mode)
        return self.detect(images)

    def detect(self, images, orig_sizes=None, valid_sizes=None):
        """torchvision's detections, their mask probabilities pasted at the original size a few detections at a
        time, as ours are: torchvision's ``paste_masks_in_image`` makes one float canvas per detection at the input
        size (500 detections on a 2544x1206 input: 6 GB before the resize to the original size), which ran this
        24 GB host out of memory in the val pass."""
        from autotimm.models.base import scale_boxes
        from autotimm.models.fcos import paste_binary_masks

        h, w = images.shape[-2:]
        results = []
        for i, d in enumerate(self.net(list(images))):
            boxes, oh, ow = d["boxes"], h, w
            if orig_sizes is not None:
                oh, ow = (int(v) for v in orig_sizes[i])
                boxes = scale_boxes(boxes, orig_sizes[i], valid_sizes[i] if valid_sizes is not None else (h, w))
            results.append({"boxes": boxes, "labels": d["labels"] - 1, "scores": d["scores"],
                            "masks": paste_binary_masks(d["masks"][:, 0], boxes, oh, ow, self.mask_threshold)})
        return results


class _TimmLike(nn.Module):
    """What the task reads of a backbone (``body`` with a pretrained config for mean/std, ``output_stride``)."""

    def __init__(self, body, mean, std):
        super().__init__()
        self.body = body
        self.body.pretrained_cfg = {"mean": tuple(mean), "std": tuple(std), "interpolation": "bilinear"}
        self.output_stride = 32

    def forward(self, x):
        return list(self.body(x).values())


def build(cfg, which: str, seed: int):
    from hydra.utils import instantiate

    torch.manual_seed(seed)
    dm = instantiate(cfg.dataset)
    task = instantiate(cfg.model)
    if which == "torchvision":
        pre = task.preprocess
        torch.manual_seed(seed)
        net = TorchvisionMaskRCNN(int(cfg.dataset.num_classes), pre["mean"], pre["std"])
        # before the task is built: its COCO AP counts as many detections per image as the model keeps
        net.set_postprocess(max_detections_per_image=int(cfg.arch.max_detections_per_image))
        task = instantiate(cfg.model, model=net)
    return dm, task


def predict_ms(task, dm, n: int = 20) -> float:
    """Predict time per val image through the evaluation pipeline (masks pasted at the original size)."""
    task.eval()
    ds = dm.val_dataset
    n = min(n, len(ds))
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(n):
            it = ds[i]
            task.model.predict(it["image"][None], it["orig_size"][None], it["valid_size"][None])
    return (time.perf_counter() - t) / n * 1000


def run(which: str, args, out: Path) -> dict:
    import pytorch_lightning as pl

    overrides = ["experiment=dsb2018", f"paths.data_dir={args.data}", f"trainer.precision={args.precision}",
                 f"seed={args.seed}", "model.compile_model=false", *args.override]
    cfg = compose(overrides)
    dm, task = build(cfg, which, args.seed)
    if args.eval_only:
        return evaluate_saved(which, args, out, cfg, dm, task)
    step_s, steps_per_epoch = calibrate(task, dm, lambda m, b: sum(m.model(b["image"], b["targets"]).values()))
    from hydra.utils import instantiate

    from autotimm.training import ProgressLog

    # the recipe's score calibration (the matching score's threshold chosen on training images before validation)
    calib = [instantiate(c) for k, c in (cfg.get("callbacks") or {}).items() if k == "score_calibration"]
    trainer = budget_trainer(which, step_s, steps_per_epoch, args.minutes, args.precision, args.seed,
                             callbacks=[ProgressLog(every_s=120), *calib, *training_callbacks(cfg)],
                             epochs=args.epochs)
    epochs = trainer.max_epochs
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    fit_min = (time.perf_counter() - t0) / 60
    images = trainer.global_step * int(cfg.dataset.batch_size)
    res = {"model": which, "epochs_planned": epochs, "epochs_done": int(trainer.current_epoch),
           "fit_min": round(fit_min, 2), "train_img_s": round(images / (fit_min * 60), 2),
           "s_per_step": round(step_s, 3), "threads": torch.get_num_threads(), "precision": str(args.precision),
           "seed": args.seed, "overrides": overrides}
    t0 = time.perf_counter()
    res["val"] = {k: float(v) for k, v in trainer.validate(task, datamodule=dm, verbose=False)[0].items()}
    res["val_min"] = round((time.perf_counter() - t0) / 60, 2)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{which}_seed{args.seed}.json"
    path.write_text(json.dumps(res, indent=1))  # kept should a later step fail
    if args.save_weights:  # the trained weights, to study the detections later without training again
        torch.save(task.state_dict(), out / f"{which}_seed{args.seed}.pt")
    if calib and not args.no_fixed:  # the same weights at the metric's configured threshold, for comparison
        from autotimm.training.calibration import set_score_thresh

        c = calib[0]
        res["calibration"] = {"objective": c.objective, "images": c.images, "score_thresh": c.score_thresh,
                              "train_" + c.objective: dict(zip(c.grid.round(2).tolist(), c.table.round(4).tolist()))}
        fixed = [float(m.get("params", {}).get("score_thresh", 0.5)) for m in cfg.model.metrics
                 if str(m.get("metric_class")) == "MatchingAccuracy"][0]
        set_score_thresh(task, fixed)
        manager = task.metric_manager
        every = manager.configs
        manager.configs = [m for m in every if "MatchingAccuracy" in str(m.metric_class)]  # COCO AP is unchanged
        try:
            plain = pl.Trainer(accelerator="cpu", devices=1, precision=args.precision, logger=False,
                               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
            fixed_val = plain.validate(task, datamodule=dm, verbose=False)[0]
        finally:
            manager.configs = every
        res["val_fixed"] = {k: float(v) for k, v in fixed_val.items() if "match" in k or k in ("val/dsb_score",
                                                                                                "val/score_thresh")}
    res["predict_ms"] = round(predict_ms(task, dm), 1)
    path.write_text(json.dumps(res, indent=1))
    return res


def evaluate_saved(which: str, args, out: Path, cfg, dm, task) -> dict:
    """``--eval-only``: the val pass again on the weights a ``--save-weights`` run kept, its training figures as
    they were (the JSON says ``re_evaluated``)."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    path, weights = out / f"{which}_seed{args.seed}.json", out / f"{which}_seed{args.seed}.pt"
    for f in (path, weights):
        if not f.is_file():
            raise SystemExit(f"--eval-only: no {f} (run with --save-weights first)")
    res = json.loads(path.read_text())
    task.load_state_dict(torch.load(weights, map_location="cpu"))
    calib = [instantiate(c) for k, c in (cfg.get("callbacks") or {}).items() if k == "score_calibration"]
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=args.precision, logger=False, callbacks=calib,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    t0 = time.perf_counter()
    res["val"] = {k: float(v) for k, v in trainer.validate(task, datamodule=dm, verbose=False)[0].items()}
    res["val_min"], res["re_evaluated"] = round((time.perf_counter() - t0) / 60, 2), True
    path.write_text(json.dumps(res, indent=1))
    return res


def table(results: list[dict]) -> str:
    cols = ["val mask AP", "AP@0.5", "match_acc_50", "dsb_score", "TP / FP / FN @0.5", "score thr.",
            "match_acc_50 / dsb_score at the fixed thr.", "train img/s", "predict ms/img", "epochs", "fit min",
            "threads"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in results:
        v = r["val"]
        cells = [f"{v.get('val/mask_map', float('nan')):.3f}", f"{v.get('val/mask_map_50', float('nan')):.3f}",
                 f"{v.get('val/match_acc_50', float('nan')):.3f}", f"{v.get('val/dsb_score', float('nan')):.3f}",
                 f"{v.get('val/match_tp_50', 0):.0f} / {v.get('val/match_fp_50', 0):.0f} / "
                 f"{v.get('val/match_fn_50', 0):.0f}", f"{v.get('val/score_thresh', float('nan')):.2f}",
                 (f"{r['val_fixed']['val/match_acc_50']:.3f} / {r['val_fixed']['val/dsb_score']:.3f} at "
                  f"{r['val_fixed']['val/score_thresh']:.2f}") if "val_fixed" in r else "",
                 f"{r['train_img_s']:.2f}", f"{r['predict_ms']:.0f}",
                 f"{r['epochs_done']}/{r['epochs_planned']}", f"{r['fit_min']:.1f}", str(r["threads"])]
        lines.append(f"| {r['model']} (seed {r['seed']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                   help="the folder holding dsb2018/ (paths.data_dir)")
    budget_args(p, "bench_dsb2018", "torchvision")
    p.add_argument("--no-fixed", action="store_true",
                   help="skip the second val pass at the metric's fixed threshold (about 7 minutes)")
    p.add_argument("--save-weights", action="store_true", help="keep the trained weights in --out (<model>_seed<k>.pt)")
    p.add_argument("--eval-only", action="store_true",
                   help="no training: validate the weights --save-weights kept in --out, rewriting the val figures")
    args = p.parse_args()
    if args.table is not None:
        print(table([json.loads(f.read_text()) for f in sorted(args.table.glob("*.json"))]))
        return
    if not (args.data / "dsb2018" / "stage1_train").is_dir():
        raise SystemExit(f"--data {args.data}: no dsb2018/stage1_train/ (the DSB2018 layout) under it")
    args.data = args.data.resolve()
    torch.set_num_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("autotimm").setLevel(logging.INFO)  # ProgressLog's lines
    print(header(f"{args.precision} (Lightning)", args.threads))
    results = []
    for which in [m.strip() for m in args.models.split(",") if m.strip()]:
        if which not in ("ours", "torchvision"):
            raise SystemExit(f"--models: unknown {which!r}; valid: ours, torchvision")
        results.append(run(which, args, args.out))
    print(table(results))


if __name__ == "__main__":
    main()
