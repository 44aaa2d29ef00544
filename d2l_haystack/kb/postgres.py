"""A workspace kept in PostgreSQL + pgvector, shared by several processes on several hosts.

With the workspace setting ``store`` set to a ``postgresql://`` URL (``d2l index --store URL``),
everything a workspace keeps besides its adapter files lives in that database:

=====================  ============================================================================
``d2l_workspaces``     one row per workspace (``store_name``): the version of its records
``d2l_records``        one row per source: the record (route, reason, hash, history) as JSONB, and
                       its query counter and last query time as columns (counted without a lock)
``d2l_route_stats``    questions answered and seconds spent per route
``d2l_journal``        the update in progress (as ``journal.json`` in a folder workspace)
``d2l_chunks_<name>``  the RAG chunks: a ``PgvectorDocumentStore`` table (cosine similarity)
=====================  ============================================================================

Locks are PostgreSQL advisory locks instead of ``flock``: the updates' lock (one writer at a
time, across hosts) and the commit gate (queries shared, an update's store writes exclusive). A
process that dies loses its session and so its locks; the next process that finds a journal row
and a free lock redoes or rolls back what it left, exactly as a folder workspace does. The
adapter files stay in the workspace folder, which every host mounts at the same path; they are
written atomically and checksummed as in a folder workspace, and the records in the database
say which adapter is current.

If the database goes away, the operation in progress raises :class:`DatabaseError` (one line,
the URL without its password); nothing is half-recorded, because an update's journal row is
written before it starts and cleared only when its records are committed.

A local server for trying it (and for the tests): :func:`start_local_server` runs the PostgreSQL
with pgvector bundled by the ``pgserver`` wheel on a Unix socket under a data folder.

    >>> redact("postgresql://me:secret@db.example:5432/kb")
    'postgresql://me:***@db.example:5432/kb'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from d2l_haystack.core.keys import EMBEDDING_DIM
from d2l_haystack.kb.commit import CommitGate
from d2l_haystack.kb.settings import WorkspaceError
from d2l_haystack.kb.state import Records, add_query

SCHEMA = """
CREATE TABLE IF NOT EXISTS d2l_workspaces (
    ws text PRIMARY KEY, version bigint NOT NULL DEFAULT 0, created double precision);
CREATE TABLE IF NOT EXISTS d2l_records (
    ws text NOT NULL, doc_id text NOT NULL, record jsonb NOT NULL,
    queries bigint NOT NULL DEFAULT 0, last_query double precision, PRIMARY KEY (ws, doc_id));
CREATE TABLE IF NOT EXISTS d2l_route_stats (
    ws text NOT NULL, route text NOT NULL, queries bigint NOT NULL DEFAULT 0,
    seconds double precision NOT NULL DEFAULT 0, PRIMARY KEY (ws, route));
CREATE INDEX IF NOT EXISTS d2l_records_last_query ON d2l_records (ws, last_query);
CREATE TABLE IF NOT EXISTS d2l_journal (ws text PRIMARY KEY, op jsonb NOT NULL);
"""
_COUNTERS = ("queries", "last_query")
CLOCK_SKEW_S = 60.0
"""How far apart the clocks of the hosts sharing a workspace may be (query counters are re-read
from this long before the newest query a process has seen)."""


class DatabaseError(WorkspaceError):
    """The workspace's PostgreSQL database cannot be reached or refused a statement."""


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def resolve_url(store: str) -> str:
    """The connection URL of a ``store`` setting (``$NAME``: read from that environment variable).

    :raises WorkspaceError: the variable is not set.
    """
    if store.startswith("$"):
        name = store[1:].strip("{}")
        value = os.environ.get(name)
        if not value:
            raise WorkspaceError(f"the workspace's store is ${name}, and that environment variable is not set")
        return value
    return store


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - installed with the project
        raise WorkspaceError("a PostgreSQL workspace needs psycopg: pip install 'psycopg[binary]' "
                             "pgvector-haystack") from exc
    return psycopg


@contextlib.contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Turn psycopg's errors into one-line :class:`DatabaseError` naming the database."""
    psycopg = _psycopg()
    try:
        yield
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(f"database {redact(url)} is unreachable: {first}") from None
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(f"database {redact(url)}: {first}") from None


def _key(*parts: str) -> int:
    """A signed 64-bit advisory-lock key."""
    return int.from_bytes(hashlib.sha1(":".join(("d2l",) + parts).encode()).digest()[:8], "big", signed=True)


class _Pool:
    """Idle autocommit connections, one user at a time each (psycopg has no pool without the
    separate ``psycopg_pool`` package, and a workspace needs only a handful)."""

    def __init__(self, url: str, size: int = 8) -> None:
        self.url, self.size = url, size
        self._idle: list[Any] = []
        self._guard = threading.Lock()

    def get(self) -> Any:
        psycopg = _psycopg()
        while True:
            with self._guard:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                with database_errors(self.url):
                    return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            if not conn.closed and not conn.broken:
                return conn

    def put(self, conn: Any) -> None:
        if conn.closed or conn.broken or conn.info.transaction_status != 0:  # 0: idle
            with contextlib.suppress(Exception):
                conn.close()
            return
        with self._guard:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        conn = self.get()
        try:
            with database_errors(self.url):
                yield conn
        finally:
            self.put(conn)

    def close(self) -> None:
        with self._guard:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


class AdvisoryLock:
    """A re-entrant lock for the threads of this process and, through a session-level advisory
    lock held on its own connection, for every other process on any host."""

    def __init__(self, pool: _Pool, key: int) -> None:
        self.pool, self.key = pool, key
        self._rlock = threading.RLock()
        self._depth = 0
        self._conn: Any = None

    def __enter__(self) -> AdvisoryLock:
        self._rlock.acquire()
        if self._depth == 0:
            try:
                conn = self.pool.get()
                with database_errors(self.pool.url):
                    conn.execute("SELECT pg_advisory_lock(%s)", (self.key,))
                self._conn = conn
            except BaseException:
                self._rlock.release()
                raise
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            conn, self._conn = self._conn, None
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
                self.pool.put(conn)
            except Exception:  # the session is gone, and its lock with it
                with contextlib.suppress(Exception):
                    conn.close()
        self._rlock.release()

    def free_elsewhere(self) -> bool:
        """Whether no session holds the lock (checked on another connection, so this process's
        own hold counts as held)."""
        with self.pool.connection() as conn:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
            if got:
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            return bool(got)


class PgCommitGate(CommitGate):
    """The commit gate across hosts: ``pg_advisory_lock_shared`` for queries, ``pg_advisory_lock``
    for an update's store writes (each holder on its own pooled connection)."""

    def __init__(self, pool: _Pool, key: int) -> None:
        super().__init__(f"postgresql-advisory:{key}")
        self.pool, self.key = pool, key

    def _acquire_across(self, exclusive: bool) -> Any:
        conn = self.pool.get()
        try:
            with database_errors(self.pool.url):
                conn.execute("SELECT pg_advisory_lock(%s)" if exclusive else "SELECT pg_advisory_lock_shared(%s)",
                             (self.key,))
        except BaseException:
            self.pool.put(conn)
            raise
        return (conn, exclusive)

    def _release_across(self, token: Any) -> None:
        conn, exclusive = token
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)" if exclusive else "SELECT pg_advisory_unlock_shared(%s)",
                         (self.key,))
            self.pool.put(conn)
        except Exception:
            with contextlib.suppress(Exception):
                conn.close()


class PgJournal:
    """The update in progress of a PostgreSQL workspace (one row of ``d2l_journal``)."""

    def __init__(self, pool: _Pool, ws: str) -> None:
        self.pool, self.ws = pool, ws

    def write(self, op: dict[str, Any]) -> None:
        with self.pool.connection() as conn:
            conn.execute("INSERT INTO d2l_journal (ws, op) VALUES (%s, %s) ON CONFLICT (ws) DO UPDATE SET op = "
                         "EXCLUDED.op", (self.ws, json.dumps({**op, "started": time.time()})))

    def clear(self) -> None:
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM d2l_journal WHERE ws = %s", (self.ws,))

    def pending(self) -> bool:
        return self.read() is not None

    def read(self) -> dict[str, Any] | None:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT op FROM d2l_journal WHERE ws = %s", (self.ws,)).fetchone()
        return dict(row[0]) if row else None


class PostgresState:
    """The records, counters, journal and locks of a workspace in PostgreSQL (see the module docstring)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.url = resolve_url(str(settings["store"]))
        self.ws = str(settings["store_name"])
        self.pool = _Pool(self.url)
        self.lock = AdvisoryLock(self.pool, _key(self.ws, "lock"))
        self.gate: CommitGate = PgCommitGate(self.pool, _key(self.ws, "gate"))
        self.journal = PgJournal(self.pool, self.ws)
        self._version: int | None = None
        self._seen_query = 0.0
        self._saved: dict[str, tuple[str, int]] = {}
        self._files: Records = {}
        self._stats: dict[str, Any] = {}
        ensure_schema(self.pool, self.ws)

    def describe(self) -> str:
        return f"{redact(self.url)} (workspace {self.ws})"

    def load(self) -> tuple[Records, dict[str, Any]] | None:
        with self.pool.connection() as conn:
            version = conn.execute("SELECT version FROM d2l_workspaces WHERE ws = %s", (self.ws,)).fetchone()[0]
            if version == self._version:
                self._refresh_counters(conn)
                return None
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                version = conn.execute("SELECT version FROM d2l_workspaces WHERE ws = %s", (self.ws,)).fetchone()[0]
                rows = conn.execute("SELECT doc_id, record, queries, last_query FROM d2l_records WHERE ws = %s",
                                    (self.ws,)).fetchall()
                stats = self._read_stats(conn)
        self._saved = {doc_id: (_dump(record), int(q)) for doc_id, record, q, _ in rows}
        self._files = {doc_id: {**record, "queries": int(q), "last_query": last} for doc_id, record, q, last in rows}
        self._stats, self._version = stats, version
        self._seen_query = max((float(last) for *_, last in rows if last is not None), default=0.0)
        return self._files, self._stats

    def _read_stats(self, conn: Any) -> dict[str, Any]:
        rows = conn.execute("SELECT route, queries, seconds FROM d2l_route_stats WHERE ws = %s", (self.ws,)).fetchall()
        return {"queries": {r: int(q) for r, q, _ in rows}, "seconds": {r: round(float(s), 4) for r, _, s in rows}}

    def _refresh_counters(self, conn: Any) -> None:
        """Query counters change without the version (queries count without the updates' lock):
        re-read those of the sources asked since the newest query this process has seen (less
        :data:`CLOCK_SKEW_S`, for hosts whose clocks differ), not every record on every lock."""
        for doc_id, q, last in conn.execute(
                "SELECT doc_id, queries, last_query FROM d2l_records WHERE ws = %s AND last_query > %s",
                (self.ws, self._seen_query - CLOCK_SKEW_S)).fetchall():
            self._seen_query = max(self._seen_query, float(last))
            if doc_id in self._files:
                self._files[doc_id]["queries"], self._files[doc_id]["last_query"] = int(q), last
                if doc_id in self._saved:  # the database has this count: saving it again is no change
                    self._saved[doc_id] = (self._saved[doc_id][0], int(q))
        fresh = self._read_stats(conn)
        self._stats.clear()
        self._stats.update(fresh)

    def save(self, files: Records, stats: dict[str, Any]) -> None:
        """Write the records that changed since they were loaded (one transaction). A query counter
        only grows here (``GREATEST``): a writer holding an older count never undoes another
        process's queries."""
        rows = {doc_id: (_dump(rec), int(rec.get("queries", 0) or 0)) for doc_id, rec in files.items()}
        changed = [d for d, row in rows.items() if self._saved.get(d) != row]
        removed = [d for d in self._saved if d not in rows]
        with self.pool.connection() as conn, conn.transaction():
            for doc_id in changed:
                rec = files[doc_id]
                conn.execute(
                    "INSERT INTO d2l_records (ws, doc_id, record, queries, last_query) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (ws, doc_id) DO UPDATE SET record = EXCLUDED.record, "
                    "queries = GREATEST(d2l_records.queries, EXCLUDED.queries), "
                    "last_query = GREATEST(d2l_records.last_query, EXCLUDED.last_query)",
                    (self.ws, doc_id, rows[doc_id][0], rows[doc_id][1], rec.get("last_query")))
            if removed:
                conn.execute("DELETE FROM d2l_records WHERE ws = %s AND doc_id = ANY(%s)", (self.ws, removed))
            version = conn.execute("UPDATE d2l_workspaces SET version = version + 1 WHERE ws = %s RETURNING version",
                                   (self.ws,)).fetchone()[0]
        self._saved, self._version = rows, version
        self._files, self._stats = files, stats

    def import_stats(self, stats: dict[str, Any]) -> None:
        """Set the per-route counters (``d2l workspace copy``)."""
        queries, seconds = stats.get("queries", {}), stats.get("seconds", {})
        with self.pool.connection() as conn, conn.transaction():
            for route in set(queries) | set(seconds):
                conn.execute("INSERT INTO d2l_route_stats (ws, route, queries, seconds) VALUES (%s, %s, %s, %s) "
                             "ON CONFLICT (ws, route) DO UPDATE SET queries = EXCLUDED.queries, "
                             "seconds = EXCLUDED.seconds",
                             (self.ws, route, int(queries.get(route, 0)), float(seconds.get(route, 0.0))))

    def count_query(self, files: Records, stats: dict[str, Any], doc_ids: Iterable[str], route: str,
                    seconds: float) -> None:
        ids, now = sorted(doc_ids), time.time()
        with self.pool.connection() as conn, conn.transaction():
            if ids:
                conn.execute("UPDATE d2l_records SET queries = queries + 1, last_query = %s "
                             "WHERE ws = %s AND doc_id = ANY(%s)", (now, self.ws, ids))
            conn.execute("INSERT INTO d2l_route_stats (ws, route, queries, seconds) VALUES (%s, %s, 1, %s) "
                         "ON CONFLICT (ws, route) DO UPDATE SET queries = d2l_route_stats.queries + 1, "
                         "seconds = d2l_route_stats.seconds + EXCLUDED.seconds", (self.ws, route, seconds))
        add_query(files, stats, ids, route, seconds, now)

    def abandoned(self) -> bool:
        return self.journal.pending() and self.lock.free_elsewhere()

    def close(self) -> None:
        self.pool.close()


def _dump(record: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in record.items() if k not in _COUNTERS}, sort_keys=True)


def ensure_schema(pool: _Pool, ws: str) -> None:
    """Create the tables (once per database) and the workspace's row."""
    with pool.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_key("schema"),))  # two hosts creating at once
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO d2l_workspaces (ws, created) VALUES (%s, %s) ON CONFLICT (ws) DO NOTHING",
                     (ws, time.time()))


def _chunk_params(settings: dict[str, Any]) -> dict[str, Any]:
    name = str(settings["store_name"])
    return {"table_name": f"d2l_chunks_{name}", "embedding_dimension": EMBEDDING_DIM,
            "vector_function": "cosine_similarity", "search_strategy": "exact_nearest_neighbor",
            "keyword_index_name": f"d2l_kw_{name}", "hnsw_index_name": f"d2l_hnsw_{name}"}


def chunk_store(settings: dict[str, Any]) -> Any:
    """The ``PgvectorDocumentStore`` of a workspace's RAG chunks (its own table and indexes)."""
    from haystack.utils import Secret
    from haystack_integrations.document_stores.pgvector import PgvectorDocumentStore

    url = resolve_url(str(settings["store"]))
    store = PgvectorDocumentStore(connection_string=Secret.from_token(url), **_chunk_params(settings))
    with database_errors(url):
        store.count_documents()  # connects and creates the table now, not in the middle of a query
    return store


def chunk_store_dict(settings: dict[str, Any]) -> dict[str, Any]:
    """The serialized form of :func:`chunk_store` for pipeline YAML (the URL is not written: the
    loader binds the workspace's own store; alone, it reads ``PG_CONN_STR`` like the integration)."""
    return {"type": "haystack_integrations.document_stores.pgvector.document_store.PgvectorDocumentStore",
            "init_parameters": {"connection_string": {"type": "env_var", "env_vars": ["PG_CONN_STR"],
                                                      "strict": False}, **_chunk_params(settings)}}


# -- a local server (pgserver) ------------------------------------------------------------------
def start_local_server(data_dir: str | Path) -> str:
    """Start (or find running) the PostgreSQL + pgvector of the ``pgserver`` wheel with its data in
    ``data_dir``, listening on a Unix socket there; returns its connection URL.

    :raises WorkspaceError: ``pgserver`` is not installed or the server cannot start.
    """
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - installed with the project
        raise WorkspaceError("a local PostgreSQL needs the pgserver wheel: pip install pgserver") from exc
    folder = Path(data_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(folder, cleanup_mode=None)
        server.ensure_postgres_running()  # pgserver keeps one handle per folder: start it again if it was stopped
        server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    except Exception as exc:
        raise WorkspaceError(f"cannot start the local PostgreSQL in {folder}: {exc}") from exc
    return str(server.get_uri())


def stop_local_server(data_dir: str | Path) -> bool:
    """Stop the local server of ``data_dir`` (``pg_ctl stop -m fast``); ``False`` if none runs."""
    import subprocess

    folder = Path(data_dir).expanduser().resolve()
    if not (folder / "postmaster.pid").is_file():
        return False
    # pgserver makes one function per PostgreSQL program at import time (setattr), out of a type checker's sight
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    user = "pgserver" if os.name == "posix" and os.geteuid() == 0 else None  # pgserver's user when root
    try:
        pg_ctl(["-m", "fast", "-w", "stop"], pgdata=folder, user=user, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return False
    return True
