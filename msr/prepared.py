"""Hot-path queries compiled once.

Building SQL from a queryset costs more than running it on the registry's hottest
requests (manifest and blob GETs: one indexed lookup each). `prepared` compiles the
queryset once per database vendor, with a distinct sentinel string for each argument, and
records where each argument lands among the SQL parameters; later calls run the same SQL
with the real values. Every parameter must be one of the arguments, so a queryset whose
SQL depends on the values (or holds constants of its own) is refused at first use.
"""

import inspect

from django.db import connection


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
        with connection.cursor() as cursor:
            cursor.execute(sql, [args[i] for i in order])
            return cursor.fetchone()

    first_row.__name__ = build.__name__
    first_row.__doc__ = build.__doc__
    return first_row
