"""Which backbone levels a multi-level semantic head reads."""

from __future__ import annotations

from collections.abc import Sequence


def as_channel_list(in_channels: int | Sequence[int]) -> list[int]:
    return [int(in_channels)] if isinstance(in_channels, int) else [int(c) for c in in_channels]


def pick_levels(in_channels: int | Sequence[int], reductions: Sequence[int] | None,
                min_stride: int = 4) -> tuple[list[int], list[int], list[int]]:
    """Indices, channels and strides of the levels at stride >= ``min_stride`` (all levels when none is).

    Without ``reductions`` the levels are taken to be at strides 4, 8, 16, 32... (shallow to deep)."""
    chans = as_channel_list(in_channels)
    reds = [int(r) for r in reductions] if reductions is not None else [4 * 2**i for i in range(len(chans))]
    if len(reds) != len(chans):
        raise ValueError(f"reductions {reds} and in_channels {chans} differ in length")
    idx = [i for i, r in enumerate(reds) if r >= min_stride] or list(range(len(chans)))
    return idx, [chans[i] for i in idx], [reds[i] for i in idx]
