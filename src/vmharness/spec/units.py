"""Durations and sizes as users write them: "20m" -> 1200 seconds, "2G" -> 2048 MiB.

Bottom of the package beside models.py. The patterns are also written out, as ECMAScript regular
expressions, for the JSON Schema (fields.py): keep the two in step.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from vmharness.errors import SpecError

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^(?:\s*(\d+)\s*([smhd]))+\s*$")
_DURATION_PART = re.compile(r"(\d+)\s*([smhd])")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS_MIB = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}
# Longer is no duration anything here means (and would overflow timers): a typo.
MAX_DURATION_S = 366 * 86400
_MAX_DIGITS = 30  # Python refuses to read integers of thousands of digits; so do we, earlier

# The same languages for JSON Schema validators (no inline flags there).
DURATION_PATTERN = r"^\s*([0-9]+|(\s*[0-9]+\s*[smhdSMHD])+)\s*$"
SIZE_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*[kKmMgGtT]?([iI]?[bB])?\s*$"
DURATION_HINT = 'write seconds (90) or a number with a unit: "90s", "20m", "2h", "1h30m"'
SIZE_HINT = 'write MiB (1024) or a size with a unit: "512M", "2G"'


def parse_duration(
    value: str | int,
    *,
    file: str | Path | None = None,
    line: int | None = None,
    field: str | None = None,
) -> int:
    """Seconds from an int (seconds) or text: "90", "90s", "20m", "2h", "1d", "1h30m"."""
    seconds: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if any(len(n) > _MAX_DIGITS for n in re.findall(r"\d+", text)):
            pass  # absurdly long: refused below as not a duration
        elif text.isdigit():
            seconds = int(text)
        elif _DURATION_RE.match(text):
            seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    if seconds is None:
        raise SpecError(
            f"not a duration: {_shown(value)}",
            file=file,
            line=line,
            field=field,
            hint=DURATION_HINT,
        )
    if seconds <= 0:
        raise SpecError(
            f"a duration must be positive, got {_shown(value)}",
            file=file,
            line=line,
            field=field,
            hint=DURATION_HINT,
        )
    if seconds > MAX_DURATION_S:
        raise SpecError(
            f"a duration of more than a year is surely a typo: {_shown(value)}",
            file=file,
            line=line,
            field=field,
            hint=DURATION_HINT,
        )
    return seconds


def parse_size_mib(
    value: str | int,
    *,
    file: str | Path | None = None,
    line: int | None = None,
    field: str | None = None,
) -> int:
    """MiB from an int (MiB) or text: "512M", "2G", "1.5G", "64MiB" (binary units)."""
    mib: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        mib = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and len(m.group(1)) <= _MAX_DIGITS:
            mib = float(m.group(1)) * _SIZE_FACTORS_MIB[m.group(2).lower()]
    if mib is None:
        raise SpecError(
            f"not a size: {_shown(value)}", file=file, line=line, field=field, hint=SIZE_HINT
        )
    if not math.isfinite(mib) or mib <= 0 or mib != int(mib):
        raise SpecError(
            f"a size must be a positive whole number of MiB, got {_shown(value)}",
            file=file,
            line=line,
            field=field,
            hint=SIZE_HINT,
        )
    return int(mib)


def _shown(value: object) -> str:
    """A value for a message: its repr, cut short (a user's value may be thousands of digits)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_size_mib(mib: int) -> str:
    """2048 -> "2G", 1536 -> "1536M": for messages."""
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"
