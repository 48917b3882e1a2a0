"""Reading one action's ``config`` map with errors that name the field's path.

Each accessor records a ``Problem`` instead of raising, so one pass reports every mistake;
``done()`` raises them together (and flags unknown keys). Durations accept ngrok's forms
(``"10s"``, ``"1m30s"``, ``"24h"``, ``"250ms"``) and plain seconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hatchway.policy.model import PolicyError, Problem

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Seconds in ``text`` (``"1m30s"``), or None when it is not a duration."""
    pos, total = 0, 0.0
    text = text.strip()
    if not text:
        return None
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


class ConfigReader:
    """Typed access to ``config`` (which may be None) under ``path`` (``...actions[0]``)."""

    def __init__(self, config: Mapping[str, Any] | None, path: str) -> None:
        self.path = f"{path}.config"
        self.problems: list[Problem] = []
        self._seen: set[str] = set()
        if config is None:
            config = {}
        elif not isinstance(config, Mapping):
            self.problems.append(Problem(self.path, "must be a map"))
            config = {}
        self.config = config

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def problem(self, key: str, message: str) -> None:
        self.problems.append(Problem(self.at(key) if key else self.path, message))

    def _get(self, key: str, required: bool) -> Any:
        self._seen.add(key)
        value = self.config.get(key)
        if value is None and required:
            self.problem(key, "is required")
        return value

    def text(self, key: str, default: str = "", *, required: bool = False) -> str:
        value = self._get(key, required)
        if value is None:
            return default
        if not isinstance(value, str):
            self.problem(key, f"must be a string, got {type(value).__name__}")
            return default
        return value

    def integer(
        self,
        key: str,
        default: int = 0,
        *,
        lo: int | None = None,
        hi: int | None = None,
        required: bool = False,
    ) -> int:
        value = self._get(key, required)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"must be an integer, got {value!r}")
            return default
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.problem(key, f"must be between {lo} and {hi}, got {value}")
            return default
        return value

    def number(
        self,
        key: str,
        default: float = 0.0,
        *,
        lo: float | None = None,
        hi: float | None = None,
        required: bool = False,
    ) -> float:
        value = self._get(key, required)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(key, f"must be a number, got {value!r}")
            return default
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.problem(key, f"must be between {lo} and {hi}, got {value}")
            return default
        return float(value)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false, got {value!r}")
            return default
        return value

    def duration(
        self,
        key: str,
        default: float,
        *,
        lo: float | None = None,
        hi: float | None = None,
        required: bool = False,
    ) -> float:
        value = self._get(key, required)
        if value is None:
            return default
        seconds = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        if isinstance(value, str):
            seconds = parse_duration(value)
        if seconds is None:
            self.problem(key, f"must be a duration such as '10s' or '1m', got {value!r}")
            return default
        if (lo is not None and seconds < lo) or (hi is not None and seconds > hi):
            self.problem(key, f"must be between {lo:g}s and {hi:g}s, got {value!r}")
            return default
        return seconds

    def str_list(self, key: str, *, required: bool = False, max_items: int | None = None) -> list[str]:
        value = self._get(key, required)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(key, "must be a list of strings")
            return []
        if required and not value:
            self.problem(key, "must not be empty")
        if max_items is not None and len(value) > max_items:
            self.problem(key, f"may hold at most {max_items} entries, got {len(value)}")
        return list(value)

    def str_map(self, key: str, *, required: bool = False, max_items: int | None = None) -> dict[str, str]:
        value = self._get(key, required)
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in value.items()
        ):
            self.problem(key, "must be a map of strings")
            return {}
        if required and not value:
            self.problem(key, "must not be empty")
        if max_items is not None and len(value) > max_items:
            self.problem(key, f"may hold at most {max_items} entries, got {len(value)}")
        return {
            k: v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in value.items()
        }

    def raw(self, key: str, *, required: bool = False) -> Any:
        return self._get(key, required)

    def done(self) -> None:
        """Raise every problem found, plus one per unknown key."""
        for key in self.config:
            if key not in self._seen:
                self.problems.append(Problem(self.at(str(key)), "unknown field"))
        if self.problems:
            raise PolicyError(self.problems)
