"""Reading the ``http`` resolver's ``[resolver]`` table: seconds, URL templates, headers (``http.py`` documents the
options and builds the resolver from them)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from aiobroker.resolver import ConfigError

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def _config_seconds(options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"[resolver] {key} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _config_url(options: Mapping[str, Any], key: str = "url") -> str:
    if key not in options:
        raise ConfigError(f"[resolver] {key} is required for kind 'http' (a template with {{service}}, e.g. "
                          "'http://127.0.0.1:8500/v1/health/service/{service}?passing=true')")
    url = options[key]
    if not isinstance(url, str) or "{service}" not in url:
        raise ConfigError(f"[resolver] {key} must be a string containing {{service}}, got {url!r}")
    try:
        sample = httpx.URL(url.replace("{service}", "x"))
    except httpx.InvalidURL as exc:
        raise ConfigError(f"[resolver] {key} {url!r} is not a valid URL: {exc}") from exc
    if sample.scheme not in ("http", "https") or not sample.host:
        raise ConfigError(f"[resolver] {key} {url!r} must be http:// or https:// with a host")
    return url


def default_binding_url(url: str) -> str:
    """``url`` with ``/binding`` appended to its path (the query and fragment kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/binding"))


def _config_headers(options: Mapping[str, Any]) -> dict[str, str]:
    headers = options.get("headers", {})
    if not isinstance(headers, Mapping):
        raise ConfigError(f"[resolver] headers must be a table of header names to strings, got {headers!r}")
    for k, v in headers.items():
        if not isinstance(k, str) or not _TOKEN.fullmatch(k):
            raise ConfigError(f"[resolver] headers: {k!r} is not a valid header name")
        if not isinstance(v, str) or not _HEADER_VALUE.fullmatch(v):
            raise ConfigError(f"[resolver] headers.{k} must be a string of printable Latin-1 characters (no line "
                              f"breaks), got {v!r}")
    return dict(headers)
