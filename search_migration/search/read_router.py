"""The read router applications embed: which engine answers, and which requests are shadowed.

The primary backend comes from `search_read_backend` / `suggest_read_backend` in cn_search.runtime_flags
(or an explicit override). A request is shadowed when hash(viewer, normalized query) falls under
`shadow_sample_rate` (0-100), so the same viewer asking the same thing is always in or always out.
The secondary engine starts before the primary and runs on a worker thread: it never delays the
primary's answer and its failure is only recorded. Each shadowed request writes one
cn_search.shadow_read_logs row with both id lists, overlap@10 and both latencies, or the error of the
engine that failed: a failing primary is logged as well as a failing shadow (the user got that error;
the error-rate gate measures the engine that answers users). Viewers and queries are stored as hashes only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable

import meilisearch
import psycopg
from psycopg_pool import ConnectionPool

from search_migration.search import meili_search
from search_migration.search import pg_search
from search_migration.search import segment
from search_migration.gates.measures import both_empty, overlap_at_10
from search_migration.search.text import normalize
from search_migration.errors import first_line

BACKENDS = ("meili", "pg")
# The pool retries a dead PostgreSQL in the background and says so on every attempt; the router reports
# an outage once, as SearchUnavailable. An application that configures logging still sees the retries.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())
FLAG_SQL = ("SELECT flag_name, flag_value FROM cn_search.runtime_flags "
            "WHERE flag_name IN ('search_read_backend', 'suggest_read_backend', 'shadow_sample_rate')")
LOG_SQL = """
INSERT INTO cn_search.shadow_read_logs
    (endpoint, topic_id, viewer_hash, query_hash, primary_backend, primary_ids, secondary_ids,
     overlap_at_10, primary_latency_ms, secondary_latency_ms, secondary_error, primary_error)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


COUNT_FLUSH_EVERY = 100
COUNT_SQL = """
INSERT INTO cn_search.read_request_counts (minute, endpoint, requests)
VALUES (date_trunc('minute', now()), %s, %s)
ON CONFLICT (minute, endpoint) DO UPDATE SET requests = read_request_counts.requests + EXCLUDED.requests
"""


class SearchUnavailable(Exception):
    """The engine that must answer cannot; the message is one printable line."""


class BadRequest(Exception):
    """The request itself is wrong (a malformed cursor, an unknown backend)."""


class PrimaryFailed(Exception):
    """What the shadow worker learns of a primary that failed: its error line and how long it took."""

    def __init__(self, error: str, latency_ms: float):
        super().__init__(error)
        self.error, self.latency_ms = error, latency_ms


MAX_QUERY_CHARS = 1_000  # longer is not a search-box query; both engines would only waste time on it
MAX_TOPIC_CHARS = 255  # outbox_consumer.MAX_TOPIC_ID: no longer topic is ever indexed
MAX_VIEWER_CHARS = 255


def check_text(name: str, value: str | None, max_chars: int) -> None:
    """Refuse input no engine can answer (too long, NUL, lone surrogates) as one line, before any engine sees it."""
    if value is None:
        return
    if len(value) > max_chars:
        raise BadRequest(f"{name} is longer than {max_chars} characters")
    if "\x00" in value:
        raise BadRequest(f"{name} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{name} is not valid UTF-8 text") from None


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["o"]
    except Exception:
        raise BadRequest("invalid cursor") from None
    if not isinstance(offset, int) or offset < 0:
        raise BadRequest("invalid cursor")
    return offset


def _digest(kind: str, value: str) -> str:
    return hashlib.sha256(f"search_migration:{kind}:{value}".encode()).hexdigest()


def sample_bucket(viewer: str | None, query: str) -> int:
    """0-99, fixed for a (viewer, normalized query): the deterministic half of shadow sampling."""
    h = hashlib.sha256(f"{viewer or ''}\x00{normalize(query)}".encode()).digest()
    return int.from_bytes(h[:8], "big") % 100


class ReadRouter:
    """Thread-safe; one per process. `close()` waits for shadow reads still being logged."""

    def __init__(self, database_url: str, meili: meilisearch.Client, pool_size: int = 4):
        self.meili = meili
        segment.warm()
        self.pool = ConnectionPool(database_url, min_size=1, max_size=pool_size, open=True,
                                   kwargs={"autocommit": True, "connect_timeout": 5})
        self._shadow = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shadow-read")
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        self._requests: dict[str, int] = {}  # auto-routed requests not yet added to read_request_counts

    # ------------------------------------------------------------------ public API

    def search(self, topic: str, q: str, limit: int = 20, cursor: str | None = None, backend: str = "auto",
               viewer: str | None = None) -> dict:
        offset = decode_cursor(cursor)
        check_text("topic", topic, MAX_TOPIC_CHARS)
        check_text("query", q, MAX_QUERY_CHARS)
        check_text("viewer", viewer, MAX_VIEWER_CHARS)
        if limit < 1 or limit > 1000:
            raise BadRequest("limit must be between 1 and 1000")
        engines = {
            "pg": lambda: self._with_conn(lambda c: pg_search.search(c, topic, q, limit, offset)),
            "meili": lambda: meili_search.search(self.meili, topic, q, limit, offset),
        }
        chosen, page = self._route("search", engines, backend, viewer, q, topic, lambda p: p.items)
        return {"topic": topic, "query": q, "items": page.items,
                "next_cursor": encode_cursor(page.next_offset) if page.next_offset is not None else None,
                "total": page.total, "backend": chosen}

    def suggest(self, q: str, limit: int = 5, backend: str = "auto", viewer: str | None = None) -> dict:
        check_text("query", q, MAX_QUERY_CHARS)
        check_text("viewer", viewer, MAX_VIEWER_CHARS)
        if limit < 1 or limit > 100:
            raise BadRequest("limit must be between 1 and 100")
        engines = {
            "pg": lambda: self._with_conn(lambda c: pg_search.suggest(c, q, limit)),
            "meili": lambda: meili_search.suggest(self.meili, q, limit),
        }
        chosen, items = self._route("suggest", engines, backend, viewer, q, None, lambda items: items)
        return {"query": q, "items": items, "backend": chosen}

    def drain(self, timeout: float = 30) -> None:
        """Wait for shadow reads in flight (a CLI process must not exit before its log row is written)."""
        with self._lock:
            pending = list(self._pending)
        wait(pending, timeout=timeout)
        self._flush_counts()

    def close(self) -> None:
        self.drain()
        self._shadow.shutdown(wait=True)
        self.pool.close()

    def __enter__(self) -> "ReadRouter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ routing

    def flags(self) -> dict[str, str]:
        """Current flags; with PostgreSQL unreachable, the legacy defaults (Meilisearch, no shadow)."""
        try:
            return dict(self._with_conn(lambda c: c.execute(FLAG_SQL).fetchall()))
        except SearchUnavailable:
            return {}

    def _route(self, endpoint: str, engines: dict[str, Callable], backend: str, viewer: str | None, q: str,
               topic: str | None, items_of: Callable):
        if backend not in ("auto", *BACKENDS):
            raise BadRequest(f"unknown backend {backend!r} (auto, meili or pg)")
        shadowed = False
        if backend == "auto":
            flags = self.flags()
            backend = flags.get(f"{endpoint}_read_backend", "meili")
            if backend not in BACKENDS:
                backend = "meili"
            try:
                rate = int(flags.get("shadow_sample_rate", "0"))
            except ValueError:
                rate = 0
            shadowed = sample_bucket(viewer, q) < rate
            self._count(endpoint)
        primary_done: Future = Future()
        if shadowed:
            secondary = "pg" if backend == "meili" else "meili"
            job = self._shadow.submit(self._shadow_read, endpoint, topic, viewer, q, backend, secondary,
                                      engines[secondary], primary_done, items_of)
            with self._lock:
                self._pending.add(job)
            job.add_done_callback(self._forget)
        started = time.perf_counter()
        try:
            result = self._call(backend, engines[backend])
        except BaseException as exc:
            primary_done.set_exception(PrimaryFailed(first_line(exc), _ms(started)))
            raise
        primary_done.set_result(([i["event_id"] for i in items_of(result)], _ms(started)))
        return backend, result

    def _count(self, endpoint: str) -> None:
        """Count a request for the observed sampling rate; written in batches, off the request path."""
        with self._lock:
            self._requests[endpoint] = self._requests.get(endpoint, 0) + 1
            due = sum(self._requests.values()) >= COUNT_FLUSH_EVERY
        if due:
            self._shadow.submit(self._flush_counts)

    def _flush_counts(self) -> None:
        with self._lock:
            counts, self._requests = self._requests, {}
        if not counts:
            return
        try:
            self._with_conn(lambda c: c.cursor().executemany(COUNT_SQL, list(counts.items())))
        except SearchUnavailable:
            pass  # a lost count only blurs the observed rate; reads must not fail for it

    def _forget(self, job: Future) -> None:
        with self._lock:
            self._pending.discard(job)

    def _call(self, backend: str, engine: Callable):
        try:
            return engine()
        except meili_search.MeiliUnavailable as exc:
            raise SearchUnavailable(f"search unavailable: {exc}") from None

    def _with_conn(self, fn: Callable):
        try:
            with self.pool.connection(timeout=5) as conn:
                return fn(conn)
        except (psycopg.OperationalError, TimeoutError) as exc:
            first = first_line(exc, 200)
            raise SearchUnavailable(f"search unavailable: PostgreSQL: {first}") from None

    def _shadow_read(self, endpoint, topic, viewer, q, primary, secondary, engine, primary_done, items_of):
        """Runs on a worker: the secondary read, then (once the primary answered) one log row. Never raises."""
        started = time.perf_counter()
        secondary_ids, error = None, None
        try:
            secondary_ids = [i["event_id"] for i in items_of(self._call(secondary, engine))]
        except Exception as exc:  # a failing secondary is data, not an outage
            error = first_line(exc)
        secondary_ms = _ms(started)
        primary_error = None
        try:
            primary_ids, primary_ms = primary_done.result()
        except PrimaryFailed as failed:  # the user got this error: it is the primary engine's, on record
            primary_ids, primary_ms, primary_error = None, failed.latency_ms, failed.error
        except BaseException as exc:
            primary_ids, primary_ms, primary_error = None, 0.0, first_line(exc)
        # an empty pair measures nothing: no overlap is recorded for it (the gates count it separately)
        compared = primary_ids is not None and secondary_ids is not None and not both_empty(primary_ids, secondary_ids)
        try:
            self._with_conn(lambda c: c.execute(LOG_SQL, (
                endpoint, topic, _digest("viewer", viewer or ""), _digest("query", normalize(q)), primary,
                primary_ids, secondary_ids, overlap_at_10(primary_ids, secondary_ids) if compared else None,
                primary_ms, None if error else secondary_ms, error, primary_error)))
        except Exception:
            pass  # shadow logging is best effort; the primary already answered


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
