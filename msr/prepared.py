"""Hot-path queries compiled once.

Building SQL from a queryset costs more than running it on the registry's hottest
requests (manifest and blob GETs: one indexed lookup each). `prepared` compiles the
queryset once per database vendor, with a distinct sentinel string for each argument, and
records where each argument lands among the SQL parameters; later calls run the same SQL
with the real values. Every parameter must be one of the arguments, so a queryset whose
SQL depends on the values (or holds constants of its own) is refused at first use.
"""

import inspect
import re
import weakref

from django.conf import settings
from django.db import DatabaseError, connection

INVALID_SQL_STATEMENT_NAME = "26000"
# PostgreSQL connections (the psycopg2 objects) on which each statement is prepared.
_prepared_on: "weakref.WeakKeyDictionary[object, set[str]]" = weakref.WeakKeyDictionary()


def prepared(build):
    """Decorate `build(*args) -> queryset.values_list(...)` (string arguments only); the
    result returns the first row (a tuple) or None."""
    arity = len(inspect.signature(build).parameters)
    compiled: dict[str, tuple[str, list[int]]] = {}

    def first_row(*args):
        entry = compiled.get(connection.vendor)
        if entry is None:
            sentinels = [f"\x00prepared-{i}\x00" for i in range(arity)]
            sql, params = build(*sentinels).query.sql_with_params()
            try:
                order = [sentinels.index(p) for p in params]
            except ValueError:
                raise AssertionError(f"{build.__name__}: SQL parameters {params!r} are not its arguments")
            entry = compiled[connection.vendor] = (sql, order)
        sql, order = entry
        params = [args[i] for i in order]
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql" and settings.DB_PREPARED_STATEMENTS:
                return _execute_prepared(cursor, build.__name__, sql, params)
            cursor.execute(sql, params)
            return cursor.fetchone()

    first_row.__name__ = build.__name__
    first_row.__doc__ = build.__doc__
    return first_row


def _execute_prepared(cursor, name: str, sql: str, params: list):
    """Run `sql` as a server-side prepared statement: PostgreSQL parses and plans it once
    per connection instead of on every request."""
    raw = connection.connection
    names = _prepared_on.setdefault(raw, set())
    statement = f"msr_{name.strip('_')}"
    if statement not in names:
        numbered = iter(range(1, len(params) + 1))
        cursor.execute(f"PREPARE {statement} AS " + re.sub(r"%s", lambda _: f"${next(numbered)}", sql))
        names.add(statement)
    execute = f"EXECUTE {statement} ({', '.join(['%s'] * len(params))})"
    try:
        cursor.execute(execute, params)
    except DatabaseError as e:
        # The session lost it (DISCARD ALL by a pooler, say): prepare it again, once,
        # where a failed statement has not aborted an enclosing transaction.
        if getattr(e.__cause__, "pgcode", None) != INVALID_SQL_STATEMENT_NAME or connection.in_atomic_block:
            raise
        names.discard(statement)
        return _execute_prepared(cursor, name, sql, params)
    return cursor.fetchone()
