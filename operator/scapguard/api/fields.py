"""Small typed readers over JSON-like mappings that raise SpecError naming the field."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from scapguard.api.errors import SpecError


def mapping(value: object, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(field, "must be an object")
    return value


def items(value: object, field: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise SpecError(field, "must be a list")
    return value


def opt_str(data: Mapping[str, Any], key: str, field: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpecError(f"{field}.{key}", "must be a string")
    return value


def req_str(data: Mapping[str, Any], key: str, field: str) -> str:
    value = opt_str(data, key, field)
    if not value:
        raise SpecError(f"{field}.{key}", "is required")
    return value


def opt_int(data: Mapping[str, Any], key: str, field: str, default: int, minimum: int = 0) -> int:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{field}.{key}", "must be an integer")
    if value < minimum:
        raise SpecError(f"{field}.{key}", f"must be at least {minimum}")
    return value


def opt_bool(data: Mapping[str, Any], key: str, field: str, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise SpecError(f"{field}.{key}", "must be true or false")
    return value


def enum(
    data: Mapping[str, Any], key: str, field: str, allowed: Sequence[str], default: str
) -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if value not in allowed:
        raise SpecError(f"{field}.{key}", f"must be one of {', '.join(allowed)}")
    return str(value)


def str_map(value: object, field: str) -> dict[str, str]:
    data = mapping(value, field)
    out: dict[str, str] = {}
    for key, item in data.items():
        if not isinstance(item, str):
            raise SpecError(f"{field}.{key}", "must be a string")
        out[str(key)] = item
    return out


def str_list(value: object, field: str) -> tuple[str, ...]:
    out: list[str] = []
    for index, item in enumerate(items(value, field)):
        if not isinstance(item, str):
            raise SpecError(f"{field}[{index}]", "must be a string")
        out.append(item)
    return tuple(out)


def matching(value: str, pattern: re.Pattern[str], field: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise SpecError(field, f"must be {what}")
    return value
