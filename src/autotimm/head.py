"""Alias of ``autotimm.heads`` (singular import style)."""

from .heads import *  # noqa: F403
from .heads import __all__  # noqa: F401
