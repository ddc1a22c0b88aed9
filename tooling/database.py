"""The database this process uses, as a URL another process can open: the workers the lab and
the tests start must write where this process reads (the test database, in a test)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from django.db import connection


def database_url_for_children() -> str:
    sd = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(sd['NAME']).resolve()}"
    if connection.vendor == "postgresql":
        auth = quote(sd["USER"] or "")
        if sd["PASSWORD"]:
            auth += ":" + quote(sd["PASSWORD"])
        return f"postgres://{auth}@{sd['HOST'] or '127.0.0.1'}:{sd['PORT'] or 5432}/{sd['NAME']}"
    raise RuntimeError(f"no URL for a {connection.vendor} database: Flowscope runs on SQLite or PostgreSQL")
