"""The road from training to the run store: a Lightning logger, its client, its records.

Example::

    from lightning_quant.runstore import RunStoreLogger

    trainer = L.Trainer(strategy="ddp_qsgd", logger=RunStoreLogger("http://127.0.0.1:8000"))
"""

from lightning_quant.runstore.client import DEFAULT_SPOOL_DIR, StoreClient, api_base, replay_spool
from lightning_quant.runstore.logger import CONFIG_KEY, RunStoreLogger
from lightning_quant.runstore.records import (
    API_PREFIX,
    RUN_FIELDS,
    MetricPoint,
    RunRecord,
    versions,
)

__all__ = [
    "API_PREFIX",
    "CONFIG_KEY",
    "DEFAULT_SPOOL_DIR",
    "RUN_FIELDS",
    "MetricPoint",
    "RunRecord",
    "RunStoreLogger",
    "StoreClient",
    "api_base",
    "replay_spool",
    "versions",
]
