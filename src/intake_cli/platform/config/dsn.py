"""Connection strings, read as libpq reads them, so that a password is found wherever it is
written and is only ever taken from the environment."""

from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote

import psycopg

from intake_cli.platform.config.environment import ENV_REFERENCE
from intake_cli.platform.config.problems import _Problems, redact

# libpq parameters whose value is a secret.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})
# A ${NAME} reference while a DSN is read: "\x00<index>\x00" (NUL cannot be in a DSN).
_REF_MARK = re.compile("\x00([0-9]+)\x00")
_LIBPQ_SPACE = " \t\n\r\f\v"


def _keyword_secrets(text: str) -> list[tuple[int, int, str]] | None:
    """Spans of the password values in `key=value` conninfo, read as libpq reads it."""
    spans: list[tuple[int, int, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _LIBPQ_SPACE:
            i += 1
        if i >= n:
            return spans
        start = i
        while i < n and text[i] not in _LIBPQ_SPACE and text[i] != "=":
            i += 1
        key = text[start:i]
        while i < n and text[i] in _LIBPQ_SPACE:
            i += 1
        if _REF_MARK.fullmatch(key) and (i >= n or text[i] != "="):
            continue  # ${NAME} standing for whole key=value pairs (or the whole string)
        if not key or i >= n or text[i] != "=":
            return None
        i += 1
        while i < n and text[i] in _LIBPQ_SPACE:
            i += 1
        quoted = i < n and text[i] == "'"
        i += quoted
        begin = i
        while i < n and (text[i] != "'" if quoted else text[i] not in _LIBPQ_SPACE):
            i += 2 if text[i] == "\\" else 1
        if quoted and i >= n:
            return None  # the quote is never closed
        end = min(i, n)
        i += quoted
        if key in _SECRET_PARAMS:
            spans.append((begin, end, "quoted" if quoted else "bare"))


def _uri_secrets(text: str) -> list[tuple[int, int, str]]:
    """Spans of the password in a postgresql:// URI: user:PASSWORD@ and ?password=."""
    spans: list[tuple[int, int, str]] = []
    begin = text.index("://") + 3
    # As libpq: credentials end at the first "@" met before any "/".
    at = next((i for i in range(begin, len(text)) if text[i] in "@/"), len(text))
    if at < len(text) and text[at] == "@":
        colon = text.find(":", begin, at)
        if colon >= 0:
            spans.append((colon + 1, at, "url"))
    query = text.find("?", begin)
    if query >= 0:
        position = query + 1
        for part in text[query + 1 :].split("&"):
            key, equals, _ = part.partition("=")
            if equals and unquote(key) in _SECRET_PARAMS:
                spans.append((position + len(key) + 1, position + len(part), "url"))
            position += len(part) + 1
    return spans


def _conninfo_secrets(text: str) -> list[tuple[int, int, str]] | None:
    """Where a connection string's passwords are, as (start, end, how written); None: unreadable."""
    if text.startswith(("postgresql://", "postgres://")):
        return _uri_secrets(text)
    return _keyword_secrets(text)


def _holds_password(text: str) -> bool:
    spans = _conninfo_secrets(text)
    if spans is None:
        return redact(text) != text
    return any(start < end for start, end, _ in spans)


_DSN_PASSWORD_RULE = (
    "passwords are read from the environment only: write password=${VARIABLE} "
    "(user:${VARIABLE}@ in a URL), with no default, and export it; or use PGPASSWORD "
    "or ~/.pgpass"
)


def _dsn(problems: _Problems, path: str, raw: str) -> str:
    """The connection string with ${NAME} filled in, its passwords from the environment only.

    A password written in the file, one given as a default (`${PW:-hunter2}`),
    and a literal that merely looks like a reference (`$hunter2`) are all
    refused. A password taken from the environment is quoted for where it goes
    (libpq quoting, or percent-encoding in a URL), so no character in it can
    break the string apart, and no parse error can quote a piece of it.
    """
    if "\x00" in raw:
        problems.add(path, "holds a NUL character")
        return ""
    refs = list(ENV_REFERENCE.finditer(raw))
    numbers = iter(range(len(refs)))
    masked = ENV_REFERENCE.sub(lambda _: f"\x00{next(numbers)}\x00", raw)
    spans = _conninfo_secrets(masked)
    if spans is None:
        problems.add(
            path,
            "is not a libpq connection string (key=value pairs, values with spaces in "
            "'quotes'; or a postgresql:// URL)",
        )
        return ""
    before = len(problems.items)
    placed: dict[int, str] = {}
    for start, end, how in spans:
        reference = _REF_MARK.fullmatch(masked[start:end])
        if reference is None:
            if start < end:
                problems.add(path, f"holds a password written in the file: {_DSN_PASSWORD_RULE}")
            continue
        number = int(reference.group(1))
        name, default = refs[number].groups()
        if default:
            problems.add(
                path,
                f"a password takes no default (${{{name}:-…}} writes it in the file): "
                + _DSN_PASSWORD_RULE,
            )
        placed[number] = how
    for number, ref in enumerate(refs):
        name, default = ref.groups()
        if number not in placed and default and _holds_password(default):
            problems.add(
                path,
                f"the default of ${{{name}:-…}} holds a password: {_DSN_PASSWORD_RULE}",
            )
    if len(problems.items) > before:
        return ""

    def fill(mark: re.Match[str]) -> str:
        number = int(mark.group(1))
        name, default = refs[number].groups()
        value = os.environ.get(name, default)
        if value is None:
            problems.add(path, f"environment variable {name} is not set")
            return ""
        how = placed.get(number)
        if how == "url":
            return quote(value, safe="")
        if how in ("quoted", "bare"):
            escaped = value.replace("\\", "\\\\").replace("'", "\\'")
            return escaped if how == "quoted" else f"'{escaped}'"
        return value

    dsn = _REF_MARK.sub(fill, masked).strip()
    if len(problems.items) > before or not dsn:
        return dsn
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        if refs:
            # The environment's values may be in libpq's words: quote none of them.
            names = ", ".join(sorted({f"${{{r.group(1)}}}" for r in refs}))
            problems.add(path, f"is not a valid connection string once {names} is filled in")
        else:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            problems.add(path, f"is not a valid connection string ({redact(detail)})")
    return dsn
