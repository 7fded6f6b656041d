"""Alias of ``autotimm.heads`` (singular import style)."""

from .heads import *  # noqa: F401,F403
from .heads import __all__  # noqa: F401
