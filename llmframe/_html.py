"""HTML tables for Jupyter: reports that show at a glance what a run did and why."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

__all__ = ["table"]


def table(title: str, rows: Sequence[Sequence[Any]], *, header: Sequence[str] = (), note: str = "") -> str:
    """One small HTML table, every value escaped; ``note`` goes under it."""

    def cells(values: Sequence[Any], tag: str) -> str:
        return "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in values)

    parts = [
        '<div class="llmframe-report">',
        f"<strong>{html.escape(title)}</strong>",
        '<table style="border-collapse:collapse">',
    ]
    if header:
        parts.append(f"<thead><tr>{cells(header, 'th')}</tr></thead>")
    parts.append("<tbody>")
    parts.extend(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    parts.append("</tbody></table>")
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    parts.append("</div>")
    return "".join(parts)
