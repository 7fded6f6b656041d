"""Alias of ``autotimm.metrics`` (singular import style)."""

from .metrics import *  # noqa: F403
from .metrics import __all__  # noqa: F401
