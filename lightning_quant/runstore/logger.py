"""``RunStoreLogger``: a Lightning logger whose backend is the lightning-quant run store.

It is the one road from training to the store. Lightning hands it what every logger gets:
the hyperparameters (the module's, and the strategy's description of the run under the
key ``"lightning_quant"``), every logged metric by step, and the end of the run. It sends
them through a :class:`~lightning_quant.runstore.client.StoreClient`, so training never
waits for the network and nothing is lost when the store is down.

The run's summary (total bytes, mean step time and its phases, final loss and accuracy,
the compression ratio) is worked out here from the metrics themselves, the same figures
a CSV or TensorBoard logger receives.
"""

from __future__ import annotations

import math
import socket
import time
from argparse import Namespace
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from lightning_quant.figures import RUN_MEANS, RUN_TOTALS, compression_ratio
from lightning_quant.hooks.stats import METRIC_PREFIX
from lightning_quant.runstore.client import DEFAULT_SPOOL_DIR, StoreClient
from lightning_quant.runstore.records import RUN_FIELDS, MetricPoint, RunRecord, versions

__all__ = ["CONFIG_KEY", "RunStoreLogger"]

CONFIG_KEY = "lightning_quant"  # the hyperparameter the strategy describes the run under
LOSS_METRICS = ("train_loss", "loss")  # the first one logged is the run's loss
ACCURACY_METRICS = ("test_acc", "test_accuracy", "val_acc", "val_accuracy", "accuracy")


class RunStoreLogger(Logger):
    """Record a training run in the lightning-quant run store, from rank zero.

    Args:
        url: the API server, e.g. ``http://127.0.0.1:8000``.
        name: the run's name (default: scheme, bits and the time).
        tags: labels to filter by in the dashboard.
        run_key: the run's idempotency key (default: a new one); a sweep passes its own to
            find the run again.
        token: bearer token when the API requires one for writes.
        spool_dir: where undeliverable records wait for ``lightning-quant replay``.
        fields: more fields of the run record (``dataset``, ``model_name``...); they win
            over what the strategy describes.
        **client_options: :class:`StoreClient` settings (``flush_interval``...).

    Example::

        trainer = L.Trainer(strategy=QuantizedDDPStrategy("qsgd"),
                            logger=[CSVLogger("logs"), RunStoreLogger("http://127.0.0.1:8000")])
    """

    def __init__(
        self,
        url: str,
        name: str | None = None,
        tags: Iterable[str] = (),
        run_key: str | None = None,
        token: str | None = None,
        spool_dir: str | Path = DEFAULT_SPOOL_DIR,
        fields: Mapping[str, Any] | None = None,
        **client_options: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(fields or {}) - RUN_FIELDS)
        if unknown:
            raise ValueError(f"a run has no field {', '.join(unknown)}")
        self.url = url
        self._name = name
        self.tags = tuple(tags)
        self.run_key = run_key
        self._options = {"token": token, "spool_dir": spool_dir, **client_options}
        self._given: dict[str, Any] = dict(fields or {})
        self._fields: dict[str, Any] = dict(self._given)  # the strategy's, then the given
        self._hyperparameters: dict[str, Any] = {}
        self._client: StoreClient | None = None
        self._created = False
        self._started = time.perf_counter()
        self._last: dict[str, float] = {}
        self._sums: dict[str, float] = {}
        self._steps: set[int] = set()

    # --- Logger's interface --------------------------------------------------------------

    @property
    @override
    def name(self) -> str:
        return "lightning-quant"

    @property
    @override
    def version(self) -> str:
        return self.run_key or ""

    @property
    def client(self) -> StoreClient:
        if self._client is None:
            self._client = StoreClient(self.url, **self._options)
        return self._client

    @override
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kw: Any) -> None:
        """Keep the module's hyperparameters, and the run's description the strategy sends
        under ``"lightning_quant"``; once the run exists, update it."""
        params = dict(vars(params) if isinstance(params, Namespace) else params)
        described = params.pop(CONFIG_KEY, None) or {}
        fields = {k: v for k, v in described.items() if k in RUN_FIELDS and k not in self._given}
        self._fields.update(fields)
        self._hyperparameters.update(params)
        if self._created:
            change = {**fields, "hyperparameters": self._hyperparameters} if params else fields
            if change:
                self.client.update(self.version, **change)

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Queue one step's values; keep what the summary needs."""
        values = {k: float(v) for k, v in metrics.items() if k != "epoch"}
        epoch = metrics.get("epoch")
        step = int(step if step is not None else len(self._steps))
        self._ensure_created()
        self._observe(step, values)
        point = MetricPoint(
            step=step,
            values=values,
            epoch=int(epoch) if epoch is not None else None,
            wall_time=time.time(),
        )
        self.client.log(self.version, [point])

    @override
    @rank_zero_only
    def save(self) -> None:
        """Create the run (Lightning calls this once the hyperparameters are logged)."""
        self._ensure_created()

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Mark the run finished or failed, with its summary; deliver what is queued."""
        self._ensure_created()
        finished = "finished" if status == "success" else "failed"
        self.client.update(
            self.version,
            status=finished,
            finished_at=datetime.now(UTC).isoformat(),
            **self.summary(),
        )
        self.client.flush()

    # --- the summary -----------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Return the run's summary fields, from the metrics logged so far."""
        steps = len(self._steps)
        comm = {name: self._sums.get(METRIC_PREFIX + name) for name in (*RUN_TOTALS, *RUN_MEANS)}
        figures: dict[str, Any] = {
            "final_loss": _first(self._last, LOSS_METRICS),
            "final_accuracy": _first(self._last, ACCURACY_METRICS),
            "steps": steps,
            "wall_s": time.perf_counter() - self._started,
        }
        if steps and comm["sent_bytes"] is not None:
            figures.update({f"total_{name}": int(comm[name] or 0) for name in RUN_TOTALS})
            figures.update({f"mean_{name}": (comm[name] or 0.0) / steps for name in RUN_MEANS})
            figures["compression_ratio"] = compression_ratio(
                figures["total_raw_bytes"], comm["sent_bytes"], self._fields.get("world_size") or 1
            )
        return {k: v for k, v in figures.items() if v is not None}

    def _observe(self, step: int, values: Mapping[str, float]) -> None:
        finite = {k: v for k, v in values.items() if math.isfinite(v)}
        self._last.update(finite)
        if any(k.startswith(METRIC_PREFIX) for k in finite):
            self._steps.add(step)
            for name, value in finite.items():
                self._sums[name] = self._sums.get(name, 0.0) + value

    def _ensure_created(self) -> None:
        if self._created:
            return
        fields = self._fields
        scheme = str(fields.get("scheme", "unknown"))
        name = self._name or f"{scheme}-{fields.get('bits')}bit-{time.strftime('%Y%m%d-%H%M%S')}"
        record = RunRecord(
            **{
                "host": socket.gethostname(),
                **fields,
                "name": name,
                "scheme": scheme,
                "run_key": self.run_key,
                "tags": (*fields.get("tags", ()), *self.tags),
                "hyperparameters": {**fields.get("hyperparameters", {}), **self._hyperparameters},
                "versions": {**versions(), **fields.get("versions", {})},
            }
        )
        self.run_key = self.client.create(record)
        self._created = True


def _first(values: Mapping[str, float], names: Iterable[str]) -> float | None:
    return next((values[name] for name in names if name in values), None)
