"""What every task shares: optimizer and scheduler by name or dict, metrics, extra logging, compile, freezing.

Constructor arguments are kept as plain data in ``hparams`` (dicts, strings, numbers), so a checkpoint rebuilds its
model with ``load_from_checkpoint`` and loads with ``weights_only=True``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ..metrics import MetricConfig, MetricManager, as_metric_config
from ..training.logging_config import LoggingConfig, as_logging_config
from ..utils import plain

log = logging.getLogger("autotimm")

OPTIMIZERS = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}
SCHEDULERS = ("cosine", "step", "multistep", "onecycle", "poly", "none")


# --------------------------------------------------------------------------------------------- component specs
def component_spec(obj: Any, kind: str) -> dict[str, Any] | None:
    """A factory (``functools.partial`` of a class, a class, or a ``{"_target_": ...}`` dict) as plain data:
    ``{"_target_": "pkg.mod.Class", **kwargs}``. Factories among its arguments (an architecture's mask head or loss)
    become nested specs marked ``_partial_: true``, so ``build_component`` hands them over as factories."""
    if obj is None:
        return None
    if isinstance(obj, dict) or hasattr(obj, "keys"):
        d = plain(obj)
        d.pop("_partial_", None)
        if "_target_" not in d:
            raise ValueError(f"{kind}: a dict spec needs a '_target_' naming the class, got keys {sorted(d)}")
        return {k: _nested_spec(v, f"{kind}.{k}") for k, v in d.items()}
    if isinstance(obj, functools.partial):
        if obj.args:
            raise ValueError(f"{kind}: pass keyword arguments only to the partial factory")
        return {"_target_": f"{obj.func.__module__}.{obj.func.__qualname__}",
                **{k: _nested_spec(v, f"{kind}.{k}") for k, v in obj.keywords.items()}}
    if isinstance(obj, type):
        return {"_target_": f"{obj.__module__}.{obj.__qualname__}"}
    raise TypeError(f"{kind}: expected a class, a functools.partial or a dict with '_target_', got {type(obj)!r}; "
                    f"to use a ready module instance, subclass the task and set it after __init__")


def _nested_spec(value: Any, kind: str) -> Any:
    """An argument of a spec as plain data: factories -> ``{"_target_": ..., "_partial_": True, ...}``."""
    if isinstance(value, nn.Module):
        raise TypeError(f"{kind}: a module instance cannot be kept in a checkpoint's hyper-parameters; pass a "
                        f"factory (a class, a functools.partial or a dict with '_target_')")
    if isinstance(value, (functools.partial, type)) or ((isinstance(value, dict) or hasattr(value, "keys"))
                                                        and "_target_" in value):
        partial = plain(value).get("_partial_", True) if not isinstance(value, (functools.partial, type)) else True
        return {**component_spec(value, kind), "_partial_": partial}
    if isinstance(value, dict) or hasattr(value, "keys"):
        return {k: _nested_spec(v, f"{kind}.{k}") for k, v in plain(value).items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_nested_spec(v, kind) for v in value]
    return plain(value)


def build_component(spec: dict[str, Any], kind: str = "component", **required: Any) -> nn.Module:
    """``hydra.utils.instantiate`` of a plain ``{"_target_": ...}`` spec with the arguments only the task knows."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(spec, _convert_="all", **required)
    except InstantiationException as e:
        raise ValueError(f"{kind}: cannot build {spec['_target_']!r}: {e}") from e


def named_choice(value: str, options, field: str) -> str:
    v = str(value).lower()
    if v not in options:
        raise ValueError(f"{field}: unknown value {value!r}; valid: {sorted(options)}")
    return v


# --------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_KEY = "autotimm"


def checkpoint_kind(ckpt: dict[str, Any], path: Any = "checkpoint") -> str:
    """The task kind a loaded checkpoint holds (``"semantic"`` or ``"instance"``), from its ``autotimm`` record.
    Checkpoints written before that record existed are told by their hyper-parameters (the seed's instance
    arguments)."""
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if isinstance(meta, dict) and isinstance(meta.get("task"), str):
        return meta["task"]
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "backbone" not in hp:
        raise ValueError(f"{path}: not an autotimm checkpoint (no '{CHECKPOINT_KEY}' record and no task "
                         f"hyper-parameters)")
    return "instance" if "mask_size" in hp or "architecture" in hp else "semantic"


# --------------------------------------------------------------------------------------------- base task
class BaseTask(pl.LightningModule):
    """Optimizers, schedulers, metrics, extra logging and compile shared by the segmentation tasks.

    A non-finite training loss never reaches the weights: the step is skipped (no backward, no optimizer step) with
    a warning, counted in ``train/nonfinite_steps``, and ``max_nonfinite_steps`` of them in a row stop the run with
    a clear error.
    """

    model: nn.Module  # the network (autotimm.models), built or received by the task
    max_nonfinite_steps: int = 10
    keep_example_outputs: bool = False  # validation steps return batch 0's predictions (set by WandbImagePanels)
    _nonfinite_total: int = 0
    _nonfinite_streak: int = 0

    def _setup_common(self, *, lr: float, weight_decay: float, optimizer: str | dict, scheduler: str | dict | None,
                      metrics: list[MetricConfig | dict] | None, metric_defaults: dict[str, Any],
                      logging_config: LoggingConfig | dict | None, freeze_backbone: bool,
                      compile_model: bool | str, compile_kwargs: dict | None):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr, self.weight_decay = lr, weight_decay
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        self._check_optim_names()
        self.metric_manager = MetricManager([as_metric_config(m) for m in (metrics or [])], metric_defaults)
        self.logging_config = as_logging_config(logging_config)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        if compile_model not in (True, False, "force", "always"):
            raise ValueError(f"compile_model must be true, false or 'force', got {compile_model!r}")
        self.compile_model = compile_model
        self.compile_kwargs = dict(compile_kwargs or {})
        self._compiled = False

    def finite_or_skip(self, loss: torch.Tensor) -> torch.Tensor | None:
        """``loss`` if finite; otherwise ``None`` (Lightning then skips backward and the optimizer step)."""
        if bool(torch.isfinite(loss).all()):
            self._nonfinite_streak = 0
            return loss
        self._nonfinite_total += 1
        self._nonfinite_streak += 1
        step = self.trainer.global_step if self._trainer is not None else -1
        warnings.warn(f"non-finite training loss ({float(loss.detach().float().reshape(-1)[0])}) at step {step}: "
                      f"step skipped, weights unchanged ({self._nonfinite_total} skipped so far)", stacklevel=2)
        self.log("train/nonfinite_steps", float(self._nonfinite_total), on_step=True, on_epoch=False)
        if self._nonfinite_streak >= self.max_nonfinite_steps:
            raise RuntimeError(f"{self._nonfinite_streak} consecutive non-finite training losses (last at step "
                               f"{step}): stopping. Lower the learning rate, enable gradient clipping "
                               f"(trainer.gradient_clip_val) or check the data for bad labels or images.")
        return None

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    # preprocessing -----------------------------------------------------------------------------------------
    @property
    def preprocess(self) -> dict[str, Any]:
        """Resolved input preprocessing (``mean``, ``std``, ``interpolation``, ``image_size``, ``pad_multiple``):
        plain data in ``hparams["preprocess"]``, so it travels with every checkpoint."""
        return self.hparams["preprocess"]

    def update_preprocess(self, source: str, **values: Any) -> None:
        """Adopt what the data actually uses (a data module's explicit ``mean``/``std``, its ``image_size``), so
        the checkpoint reproduces it; each change is logged."""
        pre = self.hparams["preprocess"]
        for key, value in values.items():
            if value is None:
                continue
            value = [float(v) for v in value] if isinstance(value, (list, tuple)) else value
            if pre.get(key) != value:
                if pre.get(key) is not None:
                    log.info("preprocess.%s: %s -> %s (from %s)", key, pre.get(key), value, source)
                pre[key] = value

    # fine-tuning ------------------------------------------------------------------------------------------
    def init_weights_from(self, path: str | Path) -> dict[str, str]:
        """Load every weight of the checkpoint at ``path`` whose name and shape fit this model; the rest keep their
        initialisation. Returns (and logs) the skipped keys with the reason. Weights-only loading (no code runs).

        A checkpoint of the other task, or one whose backbone weights match none of this model's, is an error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"init_from: {path} does not exist")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"init_from {path}: refusing to load it: it holds Python objects beyond tensors and "
                             f"plain data ({str(e).splitlines()[0]})") from None
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ValueError(f"init_from {path}: not a Lightning checkpoint (no 'state_dict')")
        theirs = checkpoint_kind(ckpt, path)
        mine = self.task_kind
        if theirs != mine:
            article = "an" if theirs == "instance" else "a"
            raise ValueError(f"init_from {path}: {article} {theirs} segmentation checkpoint cannot initialise a {mine} "
                             f"model; use a {mine} checkpoint (or a timm backbone's pretrained weights)")
        own = self.model.state_dict()
        fit, skipped = {}, {}
        for key, value in ckpt["state_dict"].items():
            name = key[len("model."):] if key.startswith("model.") else key
            if name not in own:
                skipped[name] = "not in this model"
            elif own[name].shape != value.shape:
                skipped[name] = f"shape {tuple(value.shape)} in the checkpoint, {tuple(own[name].shape)} here"
            else:
                fit[name] = value
        if not any(k.startswith("backbone.") for k in fit):
            them = ckpt.get("hyper_parameters", {}).get("backbone", {}).get("model_name", "?")
            raise ValueError(f"init_from {path}: none of its backbone weights fit this model's backbone "
                             f"({them} in the checkpoint, {self.hparams['backbone']['model_name']} here)")
        self.model.load_state_dict(fit, strict=False)
        kept = [k for k in own if k not in fit]
        log.info("init_from %s: loaded %d of %d tensors; %d skipped, %d keep their initialisation", path, len(fit),
                 len(own), len(skipped), len(kept))
        for name, why in skipped.items():
            log.info("init_from: skipped %s: %s", name, why)
        return skipped

    # what a checkpoint holds -----------------------------------------------------------------------------
    def model_spec(self) -> dict[str, Any]:
        """The model as plain data (backbone and head / architecture specs), recorded in every checkpoint."""
        raise NotImplementedError

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Every checkpoint says what it holds: ``checkpoint["autotimm"] = {"task": kind, "model": spec}``, which
        ``load_task``, ``init_from``, ``predict.py``, ``eval.py`` and ``export.py`` dispatch on."""
        from .. import __version__

        checkpoint[CHECKPOINT_KEY] = {"task": self.task_kind, "model": self.model_spec(), "version": __version__}

    # hparams as data ---------------------------------------------------------------------------------------
    @staticmethod
    def _metrics_as_data(metrics):
        return [as_metric_config(m).to_dict() for m in metrics] if metrics else None

    # freezing ------------------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "freeze_backbone", False):
            self.backbone.eval()  # frozen backbone: BatchNorm statistics stay fixed too
        return self

    # compile -------------------------------------------------------------------------------------------------
    def _maybe_compile(self):
        """Compile in place (``nn.Module.compile``: parameter names and checkpoints unchanged).

        ``compile_model=True`` compiles on CUDA only, where it pays off; on CPU, compile time dwarfs any gain for
        these models, so it is skipped unless ``compile_model='force'``.
        """
        if self._compiled or not self.compile_model:
            return
        if self.compile_model is True and self.device.type != "cuda":
            return
        for module in self.compiled_modules():
            module.compile(**self.compile_kwargs)
        self._compiled = True

    def compiled_modules(self) -> list[nn.Module]:
        return [self.backbone]

    def on_fit_start(self):
        if getattr(self, "channels_last", False) == "auto":
            self._apply_channels_last(self._channels_last_pays())
        self._maybe_compile()

    def _channels_last_pays(self) -> bool:
        """``channels_last="auto"``: channels-last on CUDA and under bf16 autocast (oneDNN / cuDNN prefer it there);
        on CPU in fp32 the contiguous layout measured faster (up to 23% at small maps), so it stays."""
        precision = str(getattr(self.trainer, "precision", "32"))
        on = self.device.type == "cuda" or "bf16" in precision
        log.info("channels_last: auto -> %s (%s, precision %s)", on, self.device.type, precision)
        return on

    def _apply_channels_last(self, on: bool) -> None:
        model = getattr(self, "model", None)
        if model is not None and hasattr(model, "channels_last"):
            model.channels_last = on
        self.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    # optimizers ----------------------------------------------------------------------------------------------
    def _check_optim_names(self):
        opt = self.optimizer_cfg
        if isinstance(opt, str):
            named_choice(opt, OPTIMIZERS, "optimizer")
        elif isinstance(opt, dict) or hasattr(opt, "keys"):
            opt = dict(opt)
            if "name" in opt:
                named_choice(opt["name"], OPTIMIZERS, "optimizer.name")
            elif "class" not in opt:
                raise ValueError(f"optimizer dict needs 'name' ({sorted(OPTIMIZERS)}) or 'class' (dotted path)")
        else:
            raise TypeError(f"optimizer must be a name or a dict, got {type(opt)!r}")
        sch = self.scheduler_cfg
        if sch is None:
            return
        if isinstance(sch, str):
            named_choice(sch, SCHEDULERS, "scheduler")
        elif isinstance(sch, dict) or hasattr(sch, "keys"):
            sch = dict(sch)
            if "name" in sch:
                named_choice(sch["name"], SCHEDULERS, "scheduler.name")
            elif "class" not in sch:
                raise ValueError(f"scheduler dict needs 'name' ({list(SCHEDULERS)}) or 'class' (dotted path)")
        else:
            raise TypeError(f"scheduler must be a name, a dict or None, got {type(sch)!r}")

    def _param_groups(self, weight_decay: float):
        """No weight decay on norms and biases (timm's ``param_groups_weight_decay``: 1-d parameters)."""
        from timm.optim import param_groups_weight_decay

        return param_groups_weight_decay(self, weight_decay)

    def configure_optimizers(self):
        opt_cfg = {"name": self.optimizer_cfg} if isinstance(self.optimizer_cfg, str) else dict(self.optimizer_cfg)
        lr = opt_cfg.pop("lr", self.lr)
        wd = opt_cfg.pop("weight_decay", self.weight_decay)
        if "class" in opt_cfg:
            module, _, name = opt_cfg.pop("class").rpartition(".")
            opt_cls = getattr(importlib.import_module(module), name)
        else:
            opt_cls = OPTIMIZERS[opt_cfg.pop("name").lower()]
        if opt_cls is torch.optim.SGD:
            opt_cfg.setdefault("momentum", 0.9)
        groups = self._param_groups(wd)
        optimizer = None
        fusable = opt_cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
        if fusable and not {"fused", "foreach"} & set(opt_cfg):
            # one fused kernel over all parameters instead of a loop of small ops per tensor (CPU and CUDA)
            try:
                optimizer = opt_cls(groups, lr=lr, fused=True, **opt_cfg)
            except (RuntimeError, TypeError, ValueError):
                optimizer = None
        if optimizer is None:
            optimizer = opt_cls(groups, lr=lr, **opt_cfg)
        scheduler = self._build_scheduler(optimizer, lr)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _total_steps(self) -> int:
        try:
            steps = int(self.trainer.estimated_stepping_batches)
        except Exception:  # noqa: BLE001 - no trainer attached
            steps = 1000
        return max(1, steps if math.isfinite(steps) else 1000)

    def _build_scheduler(self, optimizer, lr: float):
        cfg = self.scheduler_cfg
        if cfg is None:
            return None
        cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg)
        interval = cfg.pop("interval", None)
        frequency = cfg.pop("frequency", 1)
        if "class" in cfg:
            module, _, name = cfg.pop("class").rpartition(".")
            sched = getattr(importlib.import_module(module), name)(optimizer, **cfg)
            return {"scheduler": sched, "interval": interval or "epoch", "frequency": frequency}
        name = cfg.pop("name").lower()
        total = self._total_steps()
        if name == "none":
            return None
        if name == "cosine":
            warmup = int(cfg.pop("warmup_steps", 0))
            eta_min = float(cfg.pop("eta_min", 0.0))
            sched = _warmup_cosine(optimizer, total, warmup, eta_min / lr if lr else 0.0)
            interval = interval or "step"
        elif name == "poly":
            power = float(cfg.pop("power", 0.9))
            sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / total) ** power)
            interval = interval or "step"
        elif name == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.pop("max_lr", lr), total_steps=total,
                                                        **cfg)
            interval = interval or "step"
        elif name == "step":
            sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.pop("step_size", 10),
                                                    gamma=cfg.pop("gamma", 0.1), **cfg)
            interval = interval or "epoch"
        elif name == "multistep":
            sched = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.pop("milestones", [30, 60]),
                                                         gamma=cfg.pop("gamma", 0.1), **cfg)
            interval = interval or "epoch"
        else:  # pragma: no cover - validated in __init__
            raise ValueError(name)
        return {"scheduler": sched, "interval": interval, "frequency": frequency}

    # logging -------------------------------------------------------------------------------------------------
    def on_before_optimizer_step(self, optimizer):
        lc = self.logging_config
        if lc.log_learning_rate:
            self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)
        if lc.log_gradient_norm:
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            if grads:
                self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads), on_step=True, on_epoch=False)
        if lc.log_weight_norm:
            weights = [p.detach() for p in self.parameters() if p.requires_grad]
            self.log("train/weight_norm", torch.nn.utils.get_total_norm(weights), on_step=True, on_epoch=False)

    def _log_metrics(self, stage: str, on_step: bool | None = None):
        for cfg, metric in self.metric_manager.for_stage(stage):
            self.log(f"{stage}/{cfg.name}", metric, on_step=cfg.log_on_step if on_step is None else on_step,
                     on_epoch=cfg.log_on_epoch, prog_bar=cfg.prog_bar)


def _warmup_cosine(optimizer, total: int, warmup: int, floor: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


Factory = Callable[..., nn.Module]
