"""Alias of ``autotimm.losses`` (singular import style)."""

from .losses import *  # noqa: F403
from .losses import __all__  # noqa: F401
