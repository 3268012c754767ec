"""Stored calibrations: one per (model, template, system prompt, generation params)
in ``calibrations.json`` in the cache folder, for ``batch_size="calibrated"``."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._calibration_report import CalibrationReport
from ._capabilities import atomic_write_json
from ._keys import call_prefix
from ._warn import warn_user

__all__ = [
    "CALIBRATIONS_FILE",
    "calibration_key",
    "load_calibration",
    "load_calibration_report",
    "store_calibration",
]

#: The file, in the cache folder, that holds one calibration per key.
CALIBRATIONS_FILE = "calibrations.json"
_FILE_VERSION = 1
_file_lock = threading.Lock()



def calibration_key(
    model: str,
    template: str,
    system: str | None = None,
    params: Mapping[str, Any] | None = None,
    output: Any = "text",
) -> str:
    """The key a calibration is stored under: what decides the answers, as for cache keys.

    >>> calibration_key("gpt-4o-mini", "Capital of {country}?") == calibration_key(
    ...     "gpt-4o-mini", "Capital of {country}?", None, {})
    True
    """
    prefix = call_prefix(model=model, template=template, system=system, params=params, output=output)
    return "cal-" + prefix.hex()


def _path(cache_dir: str | os.PathLike[str]) -> Path:
    return Path(os.fspath(cache_dir)).expanduser() / CALIBRATIONS_FILE


def _read_entries(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        warn_user(
            f"llmframe: cannot read {path} ({exc}); ignoring stored calibrations"
        )
        return {}
    try:
        data = json.loads(text)
        entries = data["calibrations"]
        if not isinstance(entries, dict):
            raise TypeError("'calibrations' is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        warn_user(
            f"llmframe: {path} is not a valid calibration file ({exc}); ignoring it "
            "(the next calibration rewrites it)"
        )
        return {}
    return entries


def store_calibration(
    cache_dir: str | os.PathLike[str], key: str, report: CalibrationReport
) -> Path:
    """Store ``report`` under ``key`` (from :func:`calibration_key`) in the cache folder.

    The file is replaced atomically (written to a temporary name, then
    ``os.replace``), so a reader sees the old or the new file, never half of
    one. Two processes storing at the same instant may lose one of the two
    entries; that costs a recalibration, never a wrong batch size.
    """
    path = _path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock:
        entries = _read_entries(path)
        entries[key] = {
            "recommended_batch_size": report.recommended_batch_size,
            "min_agreement": report.min_agreement,
            "model": report.model,
            "template_hash": report.template_hash,
            "created": datetime.now(timezone.utc).isoformat(),
            "report": report.to_dict(),
        }
        atomic_write_json(path, {"version": _FILE_VERSION, "calibrations": entries})
    return path


def load_calibration(cache_dir: str | os.PathLike[str], key: str) -> int | None:
    """The recommended batch size stored under ``key``, or ``None`` if there is none.

    A missing file means no calibration; a corrupt file or entry is ignored with
    a warning (and rewritten by the next calibration).
    """
    path = _path(cache_dir)
    entry = _read_entries(path).get(key)
    if entry is None:
        return None
    size = entry.get("recommended_batch_size") if isinstance(entry, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        warn_user(
            f"llmframe: ignoring a malformed calibration for {key} in {path}"
        )
        return None
    return size


def load_calibration_report(
    cache_dir: str | os.PathLike[str], key: str
) -> CalibrationReport | None:
    """The whole stored :class:`CalibrationReport` under ``key``, or ``None``."""
    entry = _read_entries(_path(cache_dir)).get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("report"), dict):
        return None
    try:
        return CalibrationReport.from_dict(entry["report"])
    except (TypeError, ValueError):
        return None


