"""Send run records to the lightning-quant API, never blocking or breaking training.

:class:`RunReporter` is a Lightning callback (rank zero only) that creates the run with
its full configuration, streams step metrics, and marks the run finished or failed.
The HTTP work happens in :class:`ReportClient`'s background thread: training only puts
events on a bounded queue. Whatever cannot be delivered (API down, slow, queue full) is
appended to a spool file and replayed when the API answers again, or later with
``lightning-quant replay``. Metric posts are idempotent on the server, so replaying
never stores a value twice, and a run is created at most once per run key (its tag).
"""

from __future__ import annotations

import atexit
import json
import logging
import platform
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_quant.collectives import fp32_allreduce_bytes

__all__ = ["ReportClient", "RunReporter", "replay_spool"]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
DEFAULT_SPOOL_DIR = Path("data/spool")
KEY_TAG = "run-key:"


def api_base(url: str) -> str:
    """Return the REST base (``.../api/v1``) for a server URL with or without it."""
    url = url.rstrip("/")
    return url if url.endswith(API_PREFIX) else url + API_PREFIX


class _Offline(Exception):
    """The API did not answer (or answered 5xx): keep the event for later."""


class ReportClient:
    """Deliver one run's events to the API from a background thread.

    Args:
        url: the API server, e.g. ``http://127.0.0.1:8000``.
        run: the run's creation body (name, scheme, configuration...).
        token: bearer token when the API requires one for writes.
        spool_dir: where undeliverable events wait (one JSON-lines file per run).
        batch_points: metric values per POST at most.
        flush_interval: seconds between posts while metrics trickle in.
        timeout: seconds per HTTP request.
        queue_size: events held in memory before they go straight to the spool.

    Example::

        client = ReportClient("http://127.0.0.1:8000", {"name": "run", "scheme": "qsgd"})
        client.log_metrics(step=0, values={"loss": 2.3})
        client.finish({"status": "finished", "final_loss": 0.1})
        client.close()
    """

    def __init__(
        self,
        url: str,
        run: dict[str, Any],
        token: str | None = None,
        spool_dir: str | Path = DEFAULT_SPOOL_DIR,
        batch_points: int = 2000,
        flush_interval: float = 0.5,
        timeout: float = 5.0,
        queue_size: int = 10_000,
        retry_interval: float = 1.0,
    ) -> None:
        self.key = uuid.uuid4().hex
        self.base = api_base(url)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.spool_path = Path(spool_dir) / f"{self.key}.jsonl"
        self.batch_points = batch_points
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.run_id: int | None = None
        self._delivery = _Delivery(self.base)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_size)
        self._spool_lock = threading.Lock()
        self._offline_since: float | None = None
        self._closed = False
        self.spooled = 0  # events that went through the spool file
        run = {**run, "tags": [*run.get("tags", []), KEY_TAG + self.key]}
        self._put({"op": "create", "key": self.key, "body": run})
        self._thread = threading.Thread(target=self._work, name="lq-reporter", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # --- called from training: never blocks ----------------------------------------------

    def log_metrics(
        self,
        step: int,
        values: dict[str, float],
        epoch: int | None = None,
        wall_time: float | None = None,
    ) -> None:
        """Queue one step's named scalars (non-finite values are dropped)."""
        clean = {k: float(v) for k, v in values.items() if v is not None and _finite(v)}
        if clean:
            point = {"step": int(step), "epoch": epoch, "wall_time": wall_time or time.time()}
            self._put({"op": "metrics", "key": self.key, "points": [{**point, "values": clean}]})

    def update(self, body: dict[str, Any]) -> None:
        """Queue a change of the run (status, summary figures)."""
        self._put({"op": "update", "key": self.key, "body": body})

    def finish(self, body: dict[str, Any]) -> None:
        """Queue the final update (``status`` finished or failed, summary figures)."""
        self.update({"finished_at": _utc_now(), **body})

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

    def _put(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._spool([event])

    # --- the background thread -------------------------------------------------------------

    def _work(self) -> None:
        with httpx.Client(timeout=self.timeout, headers=self.headers, trust_env=False) as http:
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
                        log.info("lightning-quant API unreachable (%s); spooling", error)
                        self._offline_since = time.monotonic()
                for flushed in flushes:
                    flushed.set()
            if self._offline_since is not None:
                self._try_replay(http)

    def _drain(self) -> tuple[list[dict[str, Any]], bool]:
        """Wait for events, then gather more for up to ``flush_interval`` seconds."""
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.flush_interval
        while True:
            timeout = deadline - time.monotonic()
            try:
                event = (
                    self._queue.get(timeout=max(timeout, 0.0))
                    if timeout > 0
                    else (self._queue.get_nowait())
                )
            except queue.Empty:
                return events, False
            if event is None:
                return events, True
            events.append(event)
            if event["op"] == "flush":
                return events, False
            if sum(len(e.get("points", ())) for e in events) >= self.batch_points:
                return events, False

    def _try_replay(self, http: httpx.Client) -> None:
        try:
            with self._spool_lock:
                self._delivery.replay(http, self.spool_path)
            self._offline_since = None
            log.info("lightning-quant API is back; spooled records delivered")
        except _Offline:
            self._offline_since = time.monotonic()

    def _send(self, http: httpx.Client, events: list[dict[str, Any]]) -> None:
        batches = _coalesce(events, self.batch_points)
        for i, batch in enumerate(batches):
            try:
                self.run_id = self._delivery.send(http, batch)
            except _Offline:
                self._spool([event for rest in batches[i:] for event in rest])
                raise

    def _spool(self, events: Iterable[dict[str, Any]]) -> None:
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

    A run's id is looked up by its key tag before it is created, so a creation that was
    delivered but whose answer was lost is never repeated.
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self.ids: dict[str, int] = {}
        self.creations: dict[str, dict[str, Any]] = {}

    def send(self, http: httpx.Client, batch: list[dict[str, Any]]) -> int:
        """Send one batch (a create, an update, or merged metrics); return its run id."""
        first = batch[0]
        if first["op"] == "create":
            self.creations[first["key"]] = first["body"]
        run_id = self._run_id(http, first["key"])
        if first["op"] == "update":
            _call(http, "PATCH", f"{self.base}/runs/{run_id}", json=first["body"])
        elif first["op"] == "metrics":
            points = [p for event in batch for p in event["points"]]
            _call(http, "POST", f"{self.base}/runs/{run_id}/metrics", json={"points": points})
        return run_id

    def replay(self, http: httpx.Client, path: Path) -> int:
        """Send every event of a spool file in order, then delete it; return events sent."""
        if not path.exists():
            return 0
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for batch in _coalesce(events, 2000):
            self.send(http, batch)
        path.unlink()
        return len(events)

    def _run_id(self, http: httpx.Client, key: str) -> int:
        if key not in self.ids:
            found = _call(
                http, "GET", f"{self.base}/runs", params={"tag": KEY_TAG + key, "limit": 1}
            )
            if found["data"]:
                self.ids[key] = found["data"][0]["id"]
            elif key in self.creations:
                self.ids[key] = _call(http, "POST", f"{self.base}/runs", json=self.creations[key])[
                    "id"
                ]
            else:
                raise ValueError(f"run {key} was never created and its creation record is lost")
        return self.ids[key]


def _coalesce(events: list[dict[str, Any]], batch_points: int) -> list[list[dict[str, Any]]]:
    """Group consecutive metric events of a run into batches of at most ``batch_points``."""
    batches: list[list[dict[str, Any]]] = []
    size = 0
    for event in events:
        points = len(event.get("points", ()))
        last = batches[-1] if batches else None
        if (
            last is not None
            and event["op"] == last[0]["op"] == "metrics"
            and last[0]["key"] == event["key"]
            and size + points <= batch_points
        ):
            last.append(event)
            size += points
        else:
            batches.append([event])
            size = points
    return batches


def _call(http: httpx.Client, method: str, url: str, **kwargs: Any) -> Any:
    try:
        response = http.request(method, url, **kwargs)
    except httpx.HTTPError as error:
        raise _Offline(str(error)) from error
    if response.status_code >= 500 or response.status_code in (401, 403, 408, 429):
        raise _Offline(f"{method} {url}: HTTP {response.status_code} {response.text[:200]}")
    if response.status_code >= 400:  # our own bad record: log it, never retry it forever
        log.error("lightning-quant API refused %s %s: %s", method, url, response.text[:500])
        return {"data": [], "id": None}
    return response.json()


def replay_spool(
    url: str, spool_dir: str | Path = DEFAULT_SPOOL_DIR, token: str | None = None
) -> tuple[int, int]:
    """Send every spooled run record to the API; return (files delivered, files left)."""
    delivery = _Delivery(api_base(url))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    delivered = left = 0
    with httpx.Client(timeout=10.0, headers=headers, trust_env=False) as http:
        for path in sorted(Path(spool_dir).glob("*.jsonl")):
            try:
                delivery.replay(http, path)
                delivered += 1
            except _Offline as error:
                log.warning("could not replay %s: %s", path, error)
                left += 1
    return delivered, left


# --- the Lightning callback ----------------------------------------------------------------


class RunReporter(Callback):
    """Report a training run to the lightning-quant API from rank zero.

    Args:
        url: the API server, e.g. ``http://127.0.0.1:8000``.
        name: the run's name (default: scheme, bits and time).
        tags: labels to filter by in the dashboard.
        token: bearer token when the API requires one for writes.
        spool_dir: where undeliverable records wait for ``lightning-quant replay``.
        extra: more fields for the run (e.g. ``dataset``, ``model_name``, ``summary``).

    Example::

        trainer = L.Trainer(strategy=QuantizedDDPStrategy("qsgd"),
                            callbacks=[RunReporter("http://127.0.0.1:8000", tags=["demo"])])
    """

    def __init__(
        self,
        url: str,
        name: str | None = None,
        tags: Iterable[str] = (),
        token: str | None = None,
        spool_dir: str | Path = DEFAULT_SPOOL_DIR,
        extra: dict[str, Any] | None = None,
        **client_options: Any,
    ) -> None:
        self.url = url
        self.name = name
        self.tags = list(tags)
        self.token = token
        self.spool_dir = spool_dir
        self.extra = extra or {}
        self.client_options = client_options
        self.client: ReportClient | None = None
        self.spooled = 0
        self._seen_stats = 0
        self._summary: dict[str, Any] = {}
        self._started = 0.0

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.client is not None:
            return
        self._started = time.perf_counter()
        self.client = ReportClient(
            self.url,
            run_record(trainer, pl_module, self.name, self.tags, self.extra),
            token=self.token,
            spool_dir=self.spool_dir,
            **self.client_options,
        )

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.client is None:
            return
        recorded = getattr(trainer.strategy, "steps_recorded", 0)
        stepped = recorded > self._seen_stats
        values: dict[str, float] = {}
        if stepped:
            self._seen_stats = recorded
            stats = trainer.strategy.stats_history[-1]  # type: ignore[attr-defined]
            values.update({k: v for k, v in stats.items() if k != "step"})
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            values["loss"] = float(loss.detach())
            self._summary["final_loss"] = values["loss"]
        if stepped or not recorded:
            self.client.log_metrics(trainer.global_step, values, epoch=trainer.current_epoch)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_accuracy(trainer, ("val_acc", "val_accuracy"))

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._log_accuracy(trainer, ("test_acc", "test_accuracy")) and self.client is not None:
            self.client.update({"final_accuracy": self._summary["final_accuracy"]})

    def _log_accuracy(self, trainer: L.Trainer, names: tuple[str, ...]) -> bool:
        if self.client is None or trainer.sanity_checking:
            return False
        for name in names:
            value = trainer.callback_metrics.get(name)
            if value is not None:
                accuracy = float(value)
                self._summary["final_accuracy"] = accuracy
                self.client.log_metrics(trainer.global_step, {"accuracy": accuracy})
                return True
        return False

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.client is not None:
            self.client.finish({"status": "finished", **self._final_summary(trainer)})

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self.client is not None:
            summary = self._final_summary(trainer)
            summary["summary"] = {**summary.get("summary", {}), "error": repr(exception)[:500]}
            self.client.finish({"status": "failed", **summary})
            self.client.close()
            self.spooled = self.client.spooled

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Deliver what is queued (a later ``test`` may still add the accuracy)."""
        if self.client is not None:
            self.client.flush()
            self.spooled = self.client.spooled

    def _final_summary(self, trainer: L.Trainer) -> dict[str, Any]:
        steps = getattr(trainer.strategy, "steps_recorded", 0)
        summary = {k: v for k, v in self._summary.items() if v is not None}
        if steps:
            totals = trainer.strategy.totals  # type: ignore[attr-defined]
            raw, sent = totals["raw_bytes"], totals["sent_bytes"]
            fp32 = fp32_allreduce_bytes(raw, trainer.world_size)
            summary.update(
                total_raw_bytes=int(raw),
                total_payload_bytes=int(totals["payload_bytes"]),
                total_sent_bytes=int(sent),
                compression_ratio=fp32 / sent if sent else None,
                mean_step_s=totals["step_s"] / steps,
                mean_encode_s=totals["encode_s"] / steps,
                mean_communicate_s=totals["communicate_s"] / steps,
                mean_decode_s=totals["decode_s"] / steps,
            )
        summary["summary"] = {
            "steps": trainer.global_step,
            "wall_s": time.perf_counter() - self._started,
        }
        return {k: v for k, v in summary.items() if v is not None}


def run_record(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    name: str | None,
    tags: list[str],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Describe a run for the API: setup, configuration, host and library versions."""
    strategy = trainer.strategy
    config = strategy.config_dict() if hasattr(strategy, "config_dict") else {}
    scheme = config.get("scheme", type(strategy).__name__)
    bits = config.get("bits")
    record: dict[str, Any] = {
        "name": name or f"{scheme}-{bits}bit-{time.strftime('%Y%m%d-%H%M%S')}",
        "tags": tags,
        "status": "running",
        "scheme": scheme,
        "bits": bits,
        "collective": config.get("collective"),
        "bucket_size": config.get("bucket_size"),
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "backend": config.get("backend"),
        "device": str(strategy.root_device),
        "model_name": type(pl_module).__name__,
        "param_count": sum(p.numel() for p in pl_module.parameters()),
        "strategy_config": {k: v for k, v in config.items() if k != "quantizer"},
        "quantizer_config": config.get("quantizer", {}),
        "hyperparameters": _jsonable(dict(pl_module.hparams)),
        "host": socket.gethostname(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": L.__version__,
            "lightning_quant": _package_version(),
        },
    }
    return {**record, **extra}


def _package_version() -> str:
    from lightning_quant import __version__

    return __version__


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _finite(value: Any) -> bool:
    try:
        return float(value) == float(value) and abs(float(value)) != float("inf")
    except (TypeError, ValueError):
        return False


def _utc_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()
