"""Database connections of the ``db`` node: one lazily opened pool per configured name.

A connection is configured as a URL (``LINKFLOW_DATABASES``, a JSON object name -> URL):

* ``postgresql://user:pass@host:port/db`` (or ``postgres://``): an asyncpg pool, created at
  first use. Each statement runs in its own transaction (``READ ONLY`` when asked) with
  ``SET LOCAL statement_timeout``.
* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (the SQLAlchemy form; a
  relative path is resolved against the working directory when the node is built): two
  ``sqlite3`` connections, one for writing runs and one opened read-only for ``read_only`` runs,
  on a dedicated thread, so statements on one file run one at a time (see ``db_sqlite``). The
  file is opened with ``mode=rw``: a missing file is a ``connection`` failure, not a new empty
  database. URI parameters after ``?`` are passed to SQLite (``?mode=rwc`` creates the file);
  ``mode=memory`` is refused, because each connection would see a database of its own.

Every backend failure leaves here as a ``NodeFailure`` with the class the retry logic needs;
URLs never appear in messages, because they can hold passwords.
"""

from __future__ import annotations

from collections.abc import Mapping

from linkflow_stream.nodes.db_postgres import PostgresDatabase
from linkflow_stream.nodes.db_query import Database, Dialect
from linkflow_stream.nodes.db_sqlite import SqliteDatabase, sqlite_uri


def dialect_of(name: str, url: str) -> Dialect:
    """The dialect of a configured URL; ``ValueError`` (naming the connection, not the URL) if none."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise ValueError(
                f"database {name!r}: a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path"
            )
        options = url.partition("?")[2].split("&")
        if any(part.lower() == "mode=memory" for part in options):
            raise ValueError(f"database {name!r}: mode=memory is not supported; give a database file")
        return "sqlite"
    raise ValueError(f"database {name!r}: unsupported URL scheme {scheme!r}; use postgresql:// or sqlite:///")


class Databases:
    """The configured connections by name; each opened at first use, all closed by ``close``."""

    def __init__(self, urls: Mapping[str, str], *, pool_max_size: int = 10) -> None:
        self._urls = dict(urls)
        self.dialects: dict[str, Dialect] = {name: dialect_of(name, url) for name, url in self._urls.items()}
        self._pool_max_size = pool_max_size
        self._open: dict[str, Database] = {}

    def names(self) -> list[str]:
        return sorted(self._urls)

    def get(self, name: str) -> Database:
        """The database called ``name`` (a configured name); it connects when first used."""
        db = self._open.get(name)
        if db is None:
            url = self._urls[name]
            if self.dialects[name] == "sqlite":
                db = SqliteDatabase(name, sqlite_uri(url))
            else:
                db = PostgresDatabase(name, url, max_size=self._pool_max_size)
            self._open[name] = db
        return db

    async def close(self) -> None:
        opened, self._open = self._open, {}
        for db in opened.values():
            await db.close()
