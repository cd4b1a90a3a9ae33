"""The one HTTP writer to the run store: a background thread, a bounded queue, a spool.

Training (and sweeps, and the load benchmark) only put events on a queue: create a run,
log metric points, update a run. A background thread sends them in order, merging
consecutive metric events of a run into batches. Whatever cannot be delivered (the API is
down, slow, or the queue is full) is appended to a spool file (JSON lines) and replayed,
in order, when the API answers again, or later with ``lightning-quant replay``.

Every run has an idempotency key (``RunRecord.run_key``): the store keeps one run per
key, and metric posts are idempotent too, so a replay never stores anything twice.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from lightning_quant.runstore.records import API_PREFIX, MetricPoint, RunRecord, check_fields

__all__ = [
    "DEFAULT_SPOOL_DIR",
    "StoreClient",
    "api_base",
    "auth_headers",
    "default_token",
    "replay_spool",
]

log = logging.getLogger(__name__)

DEFAULT_SPOOL_DIR = Path("data/spool")
Event = dict[str, Any]


def api_base(url: str) -> str:
    """Return the REST base (``.../api/v1``) for a server URL with or without it."""
    url = url.rstrip("/")
    return url if url.endswith(API_PREFIX) else url + API_PREFIX


def default_token() -> str | None:
    """Return the token a client sends when given none: ``LQ_API_TOKEN`` (writes, and
    reads), else ``LQ_API_READ_TOKEN`` (a private store that takes no write token)."""
    return os.environ.get("LQ_API_TOKEN") or os.environ.get("LQ_API_READ_TOKEN") or None


def auth_headers(token: str | None) -> dict[str, str]:
    """The bearer header for ``token``, else for :func:`default_token` (none without one)."""
    token = token or default_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


class _Offline(Exception):
    """The API did not answer (or answered 5xx): keep the event for later."""


class StoreClient:
    """Deliver run events to the store from a background thread; never block the caller.

    Args:
        url: the API server, e.g. ``http://127.0.0.1:8000``.
        token: bearer token when the API requires one (default: :func:`default_token`).
        spool_dir: where undeliverable events wait (one JSON-lines file per client).
        batch_values: metric values per POST at most (the store takes 10,000 by default).
        flush_interval: seconds the thread gathers events before it sends them.
        timeout: seconds per HTTP request.
        queue_size: events held in memory before they go straight to the spool.
        retry_interval: seconds between attempts while the API is unreachable.

    Example::

        client = StoreClient("http://127.0.0.1:8000")
        key = client.create(RunRecord(name="run", scheme="qsgd"))
        client.log(key, [MetricPoint(step=0, values={"loss": 2.3})])
        client.update(key, status="finished", final_loss=0.1)
        client.close()
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        spool_dir: str | Path = DEFAULT_SPOOL_DIR,
        batch_values: int = 6000,
        flush_interval: float = 0.5,
        timeout: float = 5.0,
        queue_size: int = 10_000,
        retry_interval: float = 1.0,
    ) -> None:
        self.base = api_base(url)
        self.token = token
        self.spool_path = Path(spool_dir) / f"{uuid.uuid4().hex}.jsonl"
        self.batch_values = batch_values
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.spooled = 0  # events that went through the spool file
        self._delivery = _Delivery(self.base)
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=queue_size)
        self._spool_lock = threading.Lock()
        self._offline_since: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="lq-store", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # --- called from training: never blocks ----------------------------------------------

    def create(self, record: RunRecord) -> str:
        """Queue the creation of a run; return its key (``record.run_key`` or a new one)."""
        key = record.run_key or uuid.uuid4().hex
        body = {**record.to_json(), "run_key": key}
        self._put({"op": "create", "key": key, "body": body})
        return key

    def log(self, key: str, points: Iterable[MetricPoint]) -> None:
        """Queue metric points of run ``key`` (non-finite values are dropped)."""
        body = [p.to_json() for p in points]
        body = [p for p in body if p["values"]]
        if body:
            self._put({"op": "metrics", "key": key, "points": body})

    def update(self, key: str, **fields: Any) -> None:
        """Queue a change of run ``key``'s fields (status, summary figures...)."""
        self._put({"op": "update", "key": key, "body": check_fields(fields)})

    def run_id(self, key: str) -> int | None:
        """Return the store's id of run ``key``, once a delivery has learnt it (else None)."""
        return self._delivery.ids.get(key)

    def flush(self, timeout: float = 15.0) -> bool:
        """Wait until everything queued so far is delivered or spooled."""
        if self._closed:
            return not self._thread.is_alive()
        done = threading.Event()
        try:
            self._queue.put({"op": "flush", "done": done}, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 15.0) -> bool:
        """Deliver what is queued within ``timeout`` seconds; return True if nothing is left."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive() or self.spool_path.exists():
            log.warning(
                "lightning-quant: some run records could not be sent; they are in %s "
                "(run `lightning-quant replay` once the API is up)",
                self.spool_path,
            )
            return False
        return True

    def _put(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._spool([event])

    # --- the background thread -------------------------------------------------------------

    def _work(self) -> None:
        with httpx.Client(
            timeout=self.timeout, headers=auth_headers(self.token), trust_env=False
        ) as http:
            done = False
            while not done:
                events, done = self._drain()
                flushes = [e.pop("done") for e in events if e["op"] == "flush"]
                events = [e for e in events if e["op"] != "flush"]
                if self._offline_since is not None:
                    self._spool(events)
                    if time.monotonic() - self._offline_since >= self.retry_interval or done:
                        self._try_replay(http)
                elif events:
                    try:
                        self._send(http, events)
                    except _Offline as error:  # _send spooled what it could not deliver
                        log.info("lightning-quant run store unreachable (%s); spooling", error)
                        self._offline_since = time.monotonic()
                for flushed in flushes:
                    flushed.set()
            if self._offline_since is not None:
                self._try_replay(http)

    def _drain(self) -> tuple[list[Event], bool]:
        """Wait for events, then gather more for up to ``flush_interval`` seconds."""
        events: list[Event] = []
        deadline = time.monotonic() + self.flush_interval
        while True:
            left = deadline - time.monotonic()
            try:
                event = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                return events, False
            if event is None:
                return events, True
            events.append(event)
            if event["op"] == "flush":
                return events, False
            if sum(_values(e) for e in events) >= self.batch_values:
                return events, False

    def _try_replay(self, http: httpx.Client) -> None:
        try:
            with self._spool_lock:
                self._delivery.replay(http, self.spool_path, self.batch_values)
            self._offline_since = None
            log.info("lightning-quant run store is back; spooled records delivered")
        except _Offline:
            self._offline_since = time.monotonic()

    def _send(self, http: httpx.Client, events: list[Event]) -> None:
        batches = _coalesce(events, self.batch_values)
        for i, batch in enumerate(batches):
            try:
                self._delivery.send(http, batch)
            except _Offline:
                self._spool([event for rest in batches[i:] for event in rest])
                raise

    def _spool(self, events: Iterable[Event]) -> None:
        events = list(events)
        if not events:
            return
        with self._spool_lock:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            with self.spool_path.open("a") as spool:
                for event in events:
                    spool.write(json.dumps(event) + "\n")
            self.spooled += len(events)


# --- delivery, shared by the live client and the replay command ------------------------------


class _Delivery:
    """Send events to one API, remembering server run ids by run key.

    A run is created with ``POST /runs``, which the store answers with the stored run when
    the key is already there, so a creation whose answer was lost is never repeated.
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self.ids: dict[str, int] = {}
        self.creations: dict[str, dict[str, Any]] = {}

    def send(self, http: httpx.Client, batch: list[Event]) -> None:
        """Send one batch: a create, an update, or merged metrics of one run."""
        first = batch[0]
        key = first["key"]
        if first["op"] == "create":
            self.creations[key] = first["body"]
            self.ids.pop(key, None)
        run_id = self._run_id(http, key)
        if run_id is None:
            return  # the store refused the run itself: logged, nothing more to send
        if first["op"] == "update":
            _call(http, "PATCH", f"{self.base}/runs/{run_id}", json=first["body"])
        elif first["op"] == "metrics":
            points = [p for event in batch for p in event["points"]]
            _call(http, "POST", f"{self.base}/runs/{run_id}/metrics", json={"points": points})

    def replay(self, http: httpx.Client, path: Path, batch_values: int = 6000) -> int:
        """Send every event of a spool file in order, then delete it; return events sent.

        When the API fails part way, the file keeps only what was not delivered, so a
        slow server still sees progress from one attempt to the next.
        """
        if not path.exists():
            return 0
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        batches = _coalesce(events, batch_values)
        for i, batch in enumerate(batches):
            try:
                self.send(http, batch)
            except _Offline:
                if i:
                    rest = [json.dumps(event) + "\n" for later in batches[i:] for event in later]
                    path.write_text("".join(rest))
                raise
        path.unlink()
        return len(events)

    def _run_id(self, http: httpx.Client, key: str) -> int | None:
        if key not in self.ids:
            if key in self.creations:
                created = _call(http, "POST", f"{self.base}/runs", json=self.creations[key])
            else:  # a run created by another client (a sweep's rank, say): look it up
                found = _call(http, "GET", f"{self.base}/runs", params={"run_key": key})
                created = found["data"][0] if found.get("data") else {}
            if created.get("id") is None:
                log.error("lightning-quant: no run with key %s in the store", key)
                return None
            self.ids[key] = created["id"]
        return self.ids[key]


def _values(event: Event) -> int:
    return sum(len(point["values"]) for point in event.get("points", ()))


def _coalesce(events: list[Event], batch_values: int) -> list[list[Event]]:
    """Group consecutive metric events of a run into batches of at most ``batch_values``."""
    batches: list[list[Event]] = []
    size = 0
    for event in events:
        values = _values(event)
        last = batches[-1] if batches else None
        if (
            last is not None
            and event["op"] == last[0]["op"] == "metrics"
            and last[0]["key"] == event["key"]
            and size + values <= batch_values
        ):
            last.append(event)
            size += values
        else:
            batches.append([event])
            size = values
    return batches


def _call(http: httpx.Client, method: str, url: str, **kwargs: Any) -> Any:
    try:
        response = http.request(method, url, **kwargs)
    except httpx.HTTPError as error:
        raise _Offline(str(error)) from error
    if response.status_code >= 500 or response.status_code in (401, 403, 408, 429):
        raise _Offline(f"{method} {url}: HTTP {response.status_code} {response.text[:200]}")
    if response.status_code >= 400:  # our own bad record: log it, never retry it forever
        log.error("lightning-quant run store refused %s %s: %s", method, url, response.text[:500])
        return {}
    return response.json() if response.content else {}


def replay_spool(
    url: str, spool_dir: str | Path = DEFAULT_SPOOL_DIR, token: str | None = None
) -> tuple[int, int]:
    """Send every spooled run record to the API; return (files delivered, files left)."""
    delivery = _Delivery(api_base(url))
    delivered = left = 0
    with httpx.Client(timeout=10.0, headers=auth_headers(token), trust_env=False) as http:
        for path in sorted(Path(spool_dir).glob("*.jsonl")):
            try:
                delivery.replay(http, path)
                delivered += 1
            except _Offline as error:
                log.warning("could not replay %s: %s", path, error)
                left += 1
    return delivered, left
