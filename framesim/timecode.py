"""Seconds as people read them: time codes and durations (light: the CLI prints them too)."""

from __future__ import annotations

import math


def _seconds(value: object) -> float | None:
    """``value`` as a finite, non-negative number of seconds, else None."""
    try:
        s = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return s if math.isfinite(s) and s >= 0 else None


def format_timestamp(seconds: float | None) -> str:
    """``hh:mm:ss.mmm`` (hours grow past 99 if needed); '—' for missing or negative values."""
    s = _seconds(seconds)
    if s is None:
        return "—"
    ms_total = int(round(s * 1000.0))
    h, rem = divmod(ms_total, 3_600_000)
    m, rem = divmod(rem, 60_000)
    sec, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{sec:02d}.{ms:03d}"


def format_duration(seconds: float | None) -> str:
    """Human duration: '850 ms', '12.3 s', '4 min 05 s', '1 h 02 min'."""
    s = _seconds(seconds)
    if s is None:
        return "—"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
