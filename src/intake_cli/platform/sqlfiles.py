"""Loads the SQL that lives under sql/: templates (jinja2) and named queries.

Queries are kept in files under `-- name: description` headers, the way
procrastinate keeps its queries.sql, so every statement the Python code runs
can be read in one place. Templates are rendered only where the text varies
with configuration, and every configured identifier reaches a template
already quoted by psycopg's `sql` module.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jinja2

_PACKAGED = Path(__file__).parents[1] / "sql"
_SOURCE_TREE = Path(__file__).resolve().parents[3] / "sql"
_HEADER = re.compile(r"^-- ([a-z_][a-z0-9_]*):[^\n]*\n", re.MULTILINE)


def sql_root() -> Path:
    # A wheel carries sql/ inside the package; an editable install reads the tree.
    return _PACKAGED if _PACKAGED.is_dir() else _SOURCE_TREE


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(sql_root() / "templates")),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )


def render(template: str, **context: object) -> str:
    """Render a template under sql/templates/ (plain .sql files render as they are)."""
    return _environment().get_template(template).render(**context)


def template_names(prefix: str) -> list[str]:
    root = sql_root() / "templates"
    return sorted(
        str(path.relative_to(root)) for path in (root / prefix).glob("*.sql*") if path.is_file()
    )


@functools.cache
def queries(name: str) -> dict[str, str]:
    """The named queries of sql/queries/<name>.sql."""
    text = (sql_root() / "queries" / f"{name}.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    return {key: body.strip() for key, body in zip(parts[1::2], parts[2::2], strict=True)}
