"""Small helpers shared across packages."""

from __future__ import annotations

from typing import Any


def plain(obj: Any) -> Any:
    """OmegaConf containers (what Hydra passes) and tuples -> plain dicts/lists, so checkpoints stay loadable with
    ``weights_only=True``."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def check_class_names(class_names, num_classes: int) -> list[str] | None:
    """``class_names`` as a list of strings, one per class, or None; a wrong count is an error naming both."""
    if class_names is None:
        return None
    names = [str(n) for n in plain(class_names)]
    if len(names) != num_classes:
        raise ValueError(f"class_names: {len(names)} names for num_classes={num_classes}: {names}")
    return names


def metric_keys(class_names: list[str] | None, num_classes: int) -> list[str]:
    """Metric-name suffixes for per-class metrics (``val/iou_<key>``): each name in lower case with every run of
    other characters than letters, digits and ``_`` made one ``_``; the class index where there are no names, where
    a name leaves nothing, or where two names would collide."""
    import re

    if not class_names:
        return [str(i) for i in range(num_classes)]
    keys = [re.sub(r"[^0-9a-z_]+", "_", n.lower()).strip("_") or str(i) for i, n in enumerate(class_names)]
    return [k if keys.count(k) == 1 else f"{k}_{i}" for i, k in enumerate(keys)]
