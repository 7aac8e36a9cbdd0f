"""How mounttool shows things: docker-style sizes, "N days ago", ids and aligned tables."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from mounttool.digest import Digest
from mounttool.errors import UsageError

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def human_size(n: float) -> str:
    """Like docker's units.HumanSize: decimal units, 3 significant digits."""
    i = 0
    while n >= 1000 and i < len(_UNITS) - 1:
        n /= 1000
        i += 1
    return f"{n:.3g}{_UNITS[i]}"


def parse_time(text: str) -> datetime | None:
    if not text:
        return None
    t = text.strip().replace("Z", "+00:00")
    if "." in t:  # Python wants at most 6 fractional digits
        head, _, rest = t.partition(".")
        frac = "".join(c for c in rest if c.isdigit())
        tz = rest[len(frac):]
        t = f"{head}.{frac[:6]}{tz}"
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """Like docker's units.HumanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = round(s / 3600)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{h // 24 // 365} years"


def ago(text: str, now: datetime | None = None) -> str:
    dt = parse_time(text)
    if dt is None:
        return "N/A"
    now = now or datetime.now(UTC)
    return human_duration((now - dt).total_seconds()) + " ago"


def short_id(digest: Digest, no_trunc: bool = False) -> str:
    return str(digest) if no_trunc else digest.short


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to the widest cell plus three spaces, as docker prints them."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


_FIELD = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


def render(template: str, fields: dict[str, str]) -> str:
    """A docker ``--format`` template, the ``{{.Field}}`` part of it (``\\t``, ``\\n`` too)."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in fields:
            raise UsageError(f"template: unknown field .{name} (have: "
                             f"{', '.join('.' + f for f in fields)})")
        return fields[name]
    if "{{" in _FIELD.sub("", template):
        raise UsageError(f"template: only {{{{.Field}}}} placeholders are supported: {template!r}")
    return _FIELD.sub(one, template.replace("\\t", "\t").replace("\\n", "\n"))
