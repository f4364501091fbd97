"""Deciding, before anything is sent, whether a SQL statement could write.

`sql_query` is read-only unless the caller says otherwise, and the axon database would happily
run `WITH x AS (...) DELETE ...`, `SELECT 1; DROP TABLE t` or `PRAGMA user_version = 7`. The
check is deliberately conservative: comments and literals are blanked out first (so a keyword
inside a string cannot hide or fake anything), then the text must be exactly one statement that
starts as a read and names no writing keyword anywhere. When unsure, it refuses; the message
says how to proceed (`allow_writes: true`).
"""

from __future__ import annotations

import re

WRITE_KEYWORDS = frozenset(
    {
        "INSERT", "UPDATE", "DELETE", "REPLACE", "UPSERT", "CREATE", "DROP", "ALTER", "ATTACH",
        "DETACH", "VACUUM", "REINDEX", "ANALYZE", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT",
        "RELEASE", "RETURNING", "LOAD_EXTENSION",
    }
)
READ_STARTS = frozenset({"SELECT", "WITH", "EXPLAIN", "VALUES", "PRAGMA"})
# Pragmas that only report. The ones taking an argument name a table/index to describe.
READ_PRAGMAS_WITH_ARG = frozenset(
    {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list",
     "foreign_key_check", "integrity_check", "quick_check", "table_list"}
)
READ_PRAGMAS = READ_PRAGMAS_WITH_ARG | {
    "database_list", "compile_options", "function_list", "pragma_list", "module_list",
    "collation_list", "user_version", "schema_version", "application_id", "page_count", "page_size",
    "freelist_count", "data_version", "encoding",
}

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


class SqlRefused(ValueError):
    """The statement was refused; the message says why and what to do."""


def blank_literals(sql: str) -> str:
    """`sql` with comments removed and string/identifier literals replaced by placeholders."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end
            out.append(" ")
        elif c == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end == -1:
                raise SqlRefused("the SQL has an unterminated /* comment; close it with */")
            i = end + 2
            out.append(" ")
        elif c in "'\"`[":
            close = "]" if c == "[" else c
            j = i + 1
            while True:
                j = sql.find(close, j)
                if j == -1:
                    raise SqlRefused(f"the SQL has an unterminated {c} literal; close it")
                if close != "]" and sql.startswith(close * 2, j):
                    j += 2
                    continue
                break
            out.append(" 'x' " if c == "'" else " ident ")
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def statements(sql: str) -> list[str]:
    """The non-empty statements of `sql` (literals blanked), split on `;`."""
    return [s.strip() for s in blank_literals(sql).split(";") if s.strip()]


def check_read_only(sql: str) -> None:
    """Raise `SqlRefused` unless `sql` is a single statement that cannot write."""
    parts = statements(sql)
    if not parts:
        raise SqlRefused("the SQL is empty; pass one SELECT statement")
    if len(parts) > 1:
        raise SqlRefused(
            f"sql_query runs one statement and this SQL has {len(parts)}; "
            "send them one at a time, or use sql_batch for several"
        )
    text = parts[0]
    words = _WORD.findall(text)
    first = words[0].upper() if words else ""
    if first not in READ_STARTS:
        raise SqlRefused(_write_message(first or text[:20]))
    for match in _WORD.finditer(text):
        word = match.group(0).upper()
        if word in WRITE_KEYWORDS:
            # replace(x, y, z) is SQLite's string function, not the REPLACE statement.
            if word == "REPLACE" and text[match.end():].lstrip().startswith("("):
                continue
            raise SqlRefused(_write_message(word))
    if first == "PRAGMA":
        _check_pragma(text)


def _check_pragma(text: str) -> None:
    m = re.match(r"\s*PRAGMA\s+(?:[A-Za-z_]\w*\s*\.\s*)?([A-Za-z_]\w*)\s*(\(.*\))?\s*$", text, re.I | re.S)
    if not m or "=" in text:
        raise SqlRefused(_write_message("PRAGMA with a value"))
    name, arg = m.group(1).lower(), m.group(2)
    if name not in READ_PRAGMAS or (arg and name not in READ_PRAGMAS_WITH_ARG):
        raise SqlRefused(_write_message(f"PRAGMA {name}"))


def _write_message(what: str) -> str:
    return (
        f"refused before sending: sql_query is read-only by default and this statement could write ({what}); "
        "only a single SELECT, WITH … SELECT, EXPLAIN or read-only PRAGMA runs without it. "
        "If a write is intended, call again with allow_writes: true"
    )
