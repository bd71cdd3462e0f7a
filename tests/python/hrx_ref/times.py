"""RFC 3339 text ↔ (seconds, nanos) since the Unix epoch, without datetime's range limits."""

from __future__ import annotations

import calendar
import re

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def parse_rfc3339(text: str) -> tuple[int, int]:
    """Return (seconds, nanos) for an RFC 3339 date-time such as 2026-03-02T08:15:00Z."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        raise ValueError(f"invalid date in {text!r}")
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"invalid time of day in {text!r}")
    frac = m.group(7) or ""
    nanos = int(frac.ljust(9, "0")) if frac else 0
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if m.group(8) is None:
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise ValueError(f"invalid offset in {text!r}")
        offset = oh * 3600 + om * 60
        seconds -= offset if m.group(9) == "+" else -offset
    return seconds, nanos


def ts_key(ts) -> tuple[int, int]:
    """A google.protobuf.Timestamp as a comparable (seconds, nanos) pair."""
    return (ts.seconds, ts.nanos)
