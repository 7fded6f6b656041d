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
