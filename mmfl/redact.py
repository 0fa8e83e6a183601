"""Credentials in URIs: find them, and remove them from anything that is written or printed.

A URI can carry a secret in two places: its userinfo (a user name and password before ``@host``) and its
query string (``?token=...``, ``?password=...``). ``redact_uri`` replaces both with ``***``;
``uri_secrets`` names what it found, so that a config holding one can be refused with a clear
message that does not repeat the secret.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

_SECRET_PARTS = ("pass", "pwd", "secret", "token", "credential", "signature", "auth")
_SECRET_WORDS = ("key", "sig", "session", "jwt", "code")
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@]*)@")
_QUERY_ITEM = re.compile(r"(?P<sep>[?&;])(?P<name>[^=&;#]*)=(?P<value>[^&;#]*)")


def _secret_param(name: str) -> bool:
    """Whether a query parameter name reads like a credential (token, password, api_key, X-Amz-Signature, ...)."""
    norm = name.strip().lower().replace("-", "_")
    return any(p in norm for p in _SECRET_PARTS) or norm.endswith(("apikey", "accesskey", "privatekey")) or any(
        w in norm.split("_") for w in _SECRET_WORDS)


def uri_secrets(uri: str) -> list[str]:
    """What in ``uri`` is a credential: ``"user:password"``/``"userinfo"`` and the secret query parameter names."""
    found = []
    m = _USERINFO.match(uri)
    if m and m.group("userinfo"):
        found.append("user:password" if ":" in m.group("userinfo") else "userinfo")
    try:
        query = urlsplit(uri).query
    except ValueError:
        query = uri.partition("?")[2]
    found += [name for name, _ in parse_qsl(query, keep_blank_values=True) if _secret_param(name)]
    return found


def redact_uri(uri: str) -> str:
    """``uri`` with the userinfo and every secret query value replaced by ``***``."""
    out = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@" if m.group("userinfo") else m.group(0), uri)
    return _QUERY_ITEM.sub(
        lambda m: f"{m.group('sep')}{m.group('name')}=***" if _secret_param(m.group("name")) else m.group(0), out)


def redact_text(text: str) -> str:
    """Every URI inside ``text`` redacted (for log lines and error messages)."""
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+", lambda m: redact_uri(m.group(0)), text)
