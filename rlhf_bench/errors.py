"""The errors every layer raises for bad input: the bottom of the package (it imports nothing of ours).

A ``ConfigError`` names the config key and the problem; the entry point prints it as one line and
exits 2. ``require`` and ``require_choice`` are how config dataclasses and stages check values.
"""

from __future__ import annotations

from typing import Any

_UNSET = object()


class ConfigError(ValueError):
    """A config value that is well-typed but not allowed; the message names the key."""

    def __init__(self, key: str, problem: str, value: Any = _UNSET):
        self.key = key
        got = "" if value is _UNSET else f" (got {value!r})"
        super().__init__(f"{key} {problem}{got}")


def require(condition: bool, key: str, problem: str, value: Any = _UNSET) -> None:
    """Raise a ConfigError for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, problem, value)


def require_choice(value: Any, choices, key: str) -> None:
    """Raise a ConfigError for ``key`` unless ``value`` is one of ``choices``."""
    require(value in choices, key, f"must be one of {', '.join(map(str, choices))}", value)
