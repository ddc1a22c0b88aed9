"""The database this process uses, as a URL another process can open, and a database of a run's
own beside it.

The workers the lab and the tests start must write where this process reads (the test database,
in a test). The bench and the lab measure on the configured kind of database (issue 17 runs the
bench on PostgreSQL with `DATABASE_URL=postgres://... make bench`) but never in a user's tables:
each run gets a new database on the same server (a new file, on SQLite), dropped after the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.db import DatabaseError, connection

POSTGRES_NAME_MAX = 63  # longer identifiers are cut by the server, and two runs could meet


def database_url(settings_dict: dict[str, Any], vendor: str) -> str:
    if vendor == "sqlite":
        return f"sqlite:///{Path(settings_dict['NAME']).resolve()}"
    if vendor == "postgresql":
        auth = quote(settings_dict["USER"] or "")
        if settings_dict["PASSWORD"]:
            auth += ":" + quote(settings_dict["PASSWORD"])
        return f"postgres://{auth}@{settings_dict['HOST'] or '127.0.0.1'}:{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"
    raise RuntimeError(f"no URL for a {vendor} database: Flowscope runs on SQLite or PostgreSQL")


def database_url_for_children() -> str:
    return database_url(connection.settings_dict, connection.vendor)


def own_database_name(configured: str, kind: str, pid: int) -> str:
    """`<configured>_flowscope_<kind>_<pid>`, the configured name shortened to fit PostgreSQL's limit."""
    suffix = f"_flowscope_{kind}_{pid}"
    return configured[: POSTGRES_NAME_MAX - len(suffix)] + suffix


@contextmanager
def database_of_its_own(kind: str, *, directory: Path) -> Iterator[str]:
    """A new, empty database of the configured kind for one run of `kind` (bench, lab); yields
    its URL, and removes it when the block ends, however it ends. The run migrates it itself.

    SQLite: a file in `directory` (the caller's temporary directory). PostgreSQL: a database
    on the configured server, created and dropped by this process; the configured user needs
    the CREATEDB privilege, and is told so if it lacks it."""
    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        path = directory / f"flowscope-{kind}.sqlite3"
        try:
            yield database_url({**settings_dict, "NAME": str(path)}, "sqlite")
        finally:
            for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                leftover.unlink(missing_ok=True)
        return
    if connection.vendor != "postgresql":
        raise RuntimeError(f"no database of its own for the {kind} on {connection.vendor}: Flowscope runs on SQLite or PostgreSQL")
    name = own_database_name(settings_dict["NAME"], kind, os.getpid())
    quoted = connection.ops.quote_name(name)
    # A database of this name is a run of ours that was killed with this same pid: it goes.
    _drop(quoted)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {quoted}")
    except DatabaseError as exc:
        raise RuntimeError(f"the {kind} needs a database of its own and could not create {name} ({exc}); grant the CREATEDB privilege to {settings_dict['USER']!r}") from exc
    try:
        yield database_url({**settings_dict, "NAME": name}, "postgresql")
    finally:
        _drop(quoted)


def _drop(quoted: str) -> None:
    # FORCE (PostgreSQL 13+) ends the connections a run's killed process may have left open.
    force = " WITH (FORCE)" if connection.pg_version >= 130000 else ""
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {quoted}{force}")
