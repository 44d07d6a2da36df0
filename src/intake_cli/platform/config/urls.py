"""Webhook, log drain and JWKS URLs, checked once when the file is read rather than
found broken when every call to them fails."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from intake_cli.platform.config.problems import _Problems, _show
from intake_cli.platform.config.validate import _string

# A DNS name (underscores too: container service names have them), one label
# at a time; IP literals are checked by the ipaddress module.
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_NOT_IN_URLS = re.compile(r"[\x00-\x20\x7f-\xa0\u1680\u2000-\u200f\u2028-\u202f\u205f\u3000]")


def _host_problem(host: str, bracketed: bool) -> str | None:
    if bracketed:
        try:
            ipaddress.IPv6Address(unquote(host))
        except ValueError:
            return "is not an IPv6 address"
        return None
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return "is not a valid host name"
    labels = ascii_host.removesuffix(".").split(".")
    if len(ascii_host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return "is not a valid host name"
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(ascii_host.removesuffix("."))
        except ValueError:
            return "is not an IPv4 address"
    return None


def check_url(text: str) -> str | None:
    """The reason an http(s) URL cannot be used, or None. The reason never quotes credentials.

    Checked here, once, rather than found when every call to it fails: a host
    with a space in it, a bracket left open, a port out of range. A URL may not
    carry credentials (user:password@): it is stored in DB1 and shown by
    `config set`, logs and errors; a webhook proves who calls it with
    webhook_secret instead.
    """
    if _NOT_IN_URLS.search(text):
        return "has a space or a control character in it (write a space as %20)"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL ({str(exc)[0].lower()}{str(exc)[1:]})"
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return "expected an http:// or https:// URL"
    if "@" in parts.netloc:
        return (
            "may not carry credentials (user:password@): intake stores and shows URLs "
            "in clear (a webhook checks intake's calls by their webhook_secret signature)"
        )
    host = parts.hostname
    if not host:
        return "has no host"
    if (why := _host_problem(host, parts.netloc.startswith("["))) is not None:
        return f"host {_show(host)} {why}"
    if port == 0:
        return "port 0 cannot be connected to"
    return None


def _webhook_url(problems: _Problems, path: str, value: Any) -> str | None:
    text = _string(problems, path, value)
    if text is None:
        return None
    if (reason := check_url(text)) is not None:
        problems.add(path, f"{reason}, got {_show(text)}")
        return None
    return text


def check_jwks_url(text: str) -> str | None:
    """The reason `text` cannot be where the buyers' signing keys come from, or None.

    Whoever can alter the traffic of a plain-HTTP fetch can put their own key
    in the set and sign as any buyer, so keys come over https. Plain http is
    left to a key server on the gateway's own host, named only in the forms
    that cannot mean another one: `localhost`, an address in 127.0.0.0/8, or
    [::1]. Names that merely start like one (localhost.evil.example,
    127.0.0.1.nip.io) are resolved by DNS, and other spellings of loopback
    (0.0.0.0, [::ffff:127.0.0.1]) are refused rather than reasoned about.
    """
    if (reason := check_url(text)) is not None:
        return reason
    parts = urlsplit(text)
    if parts.scheme.lower() == "https" or _is_loopback_host(parts.hostname or ""):
        return None
    return (
        "must be an https:// URL (over plain http whoever can alter the traffic can "
        "replace the keys and sign as any buyer); http:// is accepted only for "
        "localhost, 127.0.0.0/8 or [::1]"
    )


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(unquote(host))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_loopback
    return address == ipaddress.IPv6Address("::1")


def _jwks_url(problems: _Problems, path: str, value: Any) -> str | None:
    text = _string(problems, path, value)
    if text is None:
        return None
    if (reason := check_jwks_url(text)) is not None:
        problems.add(path, f"{reason}, got {_show(text)}")
        return None
    return text
