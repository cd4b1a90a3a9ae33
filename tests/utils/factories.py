"""Realistic run records and metric batches for seeding the run store in tests.

Everything is deterministic for a given ``seed``. The shapes are exactly what the REST
API takes: ``run_payload()`` is the body of ``POST /api/v1/runs``, ``metric_batch()`` the
body of ``POST /api/v1/runs/{run_id}/metrics``. To fill a store through any client with
an httpx-like ``post`` (a ``TestClient``, or ``ApiServer.client()``)::

    runs = seed_runs(client, schemes=SCHEMES, steps=200)
"""

import math
import random
from typing import Any, Protocol

__all__ = [
    "METRIC_NAMES",
    "REPORTER_METRIC_NAMES",
    "SCHEMES",
    "metric_batch",
    "metric_points",
    "run_payload",
    "scheme_setup",
    "seed_runs",
]

SCHEMES = ("qsgd", "nuqsgd", "qsgd_inf", "dqsgd", "global_qsgd", "fp32")

METRIC_NAMES = (
    "loss",
    "accuracy",
    "raw_bytes",
    "payload_bytes",
    "sent_bytes",
    "encode_s",
    "communicate_s",
    "decode_s",
    "step_s",
    "bits",
)
# Everything the training reporter posts per optimizer step (plus accuracy): the names
# above and the hook's compression ratio and bucket count. Pass ``names=`` to opt in.
REPORTER_METRIC_NAMES = (*METRIC_NAMES, "compression_ratio", "buckets")

PARAM_COUNT = 11_689_512  # ResNet-18
WORLD_SIZE = 4  # the runs' ranks: the reduce-scatter and all-reduce send 2 (n-1)/n
RING = 2 * (WORLD_SIZE - 1) / WORLD_SIZE
BUCKET_SIZE = 512
BUCKET_CAP_BYTES = 25 * 2**20  # DDP's default bucket_cap_mb


def scheme_setup(scheme: str, bits: int | None = None) -> dict[str, Any]:
    """Bits, bucket size and quantizer config as the library would store them."""
    if scheme == "fp32":
        return {"bits": 32, "bucket_size": None, "quantizer_config": {}}
    if scheme == "global_qsgd":
        bits = bits or 8
        return {"bits": bits, "bucket_size": None, "quantizer_config": {"bits": bits}}
    bits = bits or 4
    config: dict[str, Any] = {"bits": bits, "bucket_size": BUCKET_SIZE}
    if scheme == "dqsgd":
        config |= {
            "min_bits": 2,
            "max_bits": 8,
            "target_error": 1.0,
            "total_steps": 1000,
            "lr": 0.1,
            "mu": 0.01,
        }
    return {"bits": bits, "bucket_size": BUCKET_SIZE, "quantizer_config": config}


def _payload_fraction(scheme: str, bits: int) -> float:
    """Payload bytes over fp32 bytes: the codes plus one fp32 scale per bucket."""
    if scheme == "fp32":
        return 1.0
    if scheme == "global_qsgd":
        return bits / 32
    return bits / 32 + 1 / BUCKET_SIZE


def _mean_step_s(scheme: str, bits: int) -> float:
    """The expected step time of ``_curve``, which spaces the points' wall times."""
    codec = 0.0 if scheme == "fp32" else 0.00425 + 0.00325
    sent = RING * 4.0 * PARAM_COUNT * _payload_fraction(scheme, bits)
    return 0.05 * 1.025 + codec + sent / 1.25e9 * 1.05


def _dqsgd_bits(progress: float) -> int:
    """DQ-SGD's width over training: later steps get more levels (2 bits up to 8)."""
    return min(8, 2 + int(7 * progress))


def _curve(scheme: str, bits: int, step: int, steps: int, rng: random.Random) -> dict[str, float]:
    """One step's figures: loss falls and accuracy rises, a little worse with fewer bits."""
    progress = step / max(steps - 1, 1)
    if scheme == "dqsgd":
        bits = _dqsgd_bits(progress)
    penalty = 0.0 if scheme == "fp32" else 0.3 / bits
    loss = (2.3 * math.exp(-4 * progress) + 0.15 + penalty) * (1 + 0.03 * rng.gauss(0, 1))
    accuracy = min(0.99, (0.93 - penalty) * (1 - math.exp(-5 * progress)) + 0.1)
    raw = 4.0 * PARAM_COUNT
    payload = raw * _payload_fraction(scheme, bits)
    sent = RING * payload
    encode = 0.0 if scheme == "fp32" else 0.004 + 0.0005 * rng.random()
    decode = 0.0 if scheme == "fp32" else 0.003 + 0.0005 * rng.random()
    communicate = sent / 1.25e9 * (1 + 0.1 * rng.random())  # about 10 Gbit/s
    compute = 0.05 * (1 + 0.05 * rng.random())
    return {
        "loss": max(loss, 0.01),
        "accuracy": max(accuracy, 0.0),
        "raw_bytes": raw,
        "payload_bytes": payload,
        "sent_bytes": sent,
        "compression_ratio": RING * raw / sent,
        "encode_s": encode,
        "communicate_s": communicate,
        "decode_s": decode,
        "step_s": compute + encode + communicate + decode,
        "bits": float(bits),
        "buckets": float(math.ceil(raw / BUCKET_CAP_BYTES)),
    }


def metric_points(
    scheme: str = "qsgd",
    *,
    steps: int = 100,
    start: int = 0,
    total_steps: int | None = None,
    bits: int | None = None,
    names: tuple[str, ...] = METRIC_NAMES,
    steps_per_epoch: int = 50,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Steps ``start .. start + steps - 1`` of a run, as the batch endpoint's points.

    Each point is ``{"step", "epoch", "wall_time", "values": {name: float}}``.
    ``total_steps`` (default ``start + steps``) sets where the curves end.
    """
    bits = scheme_setup(scheme, bits)["bits"]
    total = total_steps or start + steps
    rng = random.Random(f"{scheme}-{bits}-{seed}-{start}")
    points = []
    for step in range(start, start + steps):
        figures = _curve(scheme, bits, step, total, rng)
        points.append(
            {
                "step": step,
                "epoch": step // steps_per_epoch,
                "wall_time": 1_700_000_000.0 + _mean_step_s(scheme, bits) * step,
                "values": {name: figures[name] for name in names},
            }
        )
    return points


def metric_batch(scheme: str = "qsgd", **kwargs: Any) -> dict[str, Any]:
    """The body of ``POST /api/v1/runs/{run_id}/metrics``: ``{"points": metric_points()}``."""
    return {"points": metric_points(scheme, **kwargs)}


def run_payload(
    scheme: str = "qsgd",
    *,
    bits: int | None = None,
    seed: int = 0,
    steps: int = 100,
    status: str = "finished",
    world_size: int = WORLD_SIZE,
    dataset: str = "cifar10",
    model_name: str = "resnet18",
    tags: list[str] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The body of ``POST /api/v1/runs`` for a run of ``scheme``.

    With ``status="finished"`` (the default) the summary figures are those of
    ``metric_points(scheme, steps=steps, bits=bits, seed=seed)``; with ``"running"``
    they are left out, as a reporter would at the start. ``overrides`` replace fields.
    """
    setup = scheme_setup(scheme, bits)
    bits = setup["bits"]
    payload: dict[str, Any] = {
        "name": f"{model_name}-{dataset}-{scheme}-{bits}b-s{seed}",
        "tags": tags if tags is not None else ["test", scheme],
        "status": status,
        "scheme": scheme,
        "bits": bits,
        "collective": "allreduce" if scheme in ("fp32", "global_qsgd") else "reduce_scatter",
        "bucket_size": setup["bucket_size"],
        "world_size": world_size,
        "num_nodes": world_size,
        "topology": f"{world_size}x1",
        "hierarchical": False,
        "backend": "gloo",
        "device": "cpu",
        "model_name": model_name,
        "param_count": PARAM_COUNT,
        "dataset": dataset,
        "strategy_config": {
            "name": f"ddp_{scheme}",
            "bucket_cap_mb": 25,
            "gradient_as_bucket_view": True,
        },
        "quantizer_config": setup["quantizer_config"],
        "hyperparameters": {
            "lr": 0.1,
            "batch_size": 128,
            "momentum": 0.9,
            "seed": seed,
            "max_steps": steps,
        },
        "host": "test-host",
        "versions": {
            "python": "3.11",
            "torch": "2.13.0",
            "lightning": "2.5",
            "lightning_quant": "0.1.0",
        },
    }
    if status != "running":
        points = metric_points(scheme, steps=steps, bits=bits, seed=seed)
        values = [point["values"] for point in points]

        def mean(name: str) -> float:
            return sum(v[name] for v in values) / len(values)

        raw = int(sum(v["raw_bytes"] for v in values))
        sent = int(sum(v["sent_bytes"] for v in values))
        payload |= {
            "final_loss": values[-1]["loss"],
            "final_accuracy": values[-1]["accuracy"],
            "total_raw_bytes": raw,
            "total_payload_bytes": int(sum(v["payload_bytes"] for v in values)),
            "total_sent_bytes": sent,
            "total_inter_node_bytes": sent,  # one rank per node: all of it leaves
            "compression_ratio": RING * raw / sent,
            "mean_step_s": mean("step_s"),
            "mean_encode_s": mean("encode_s"),
            "mean_communicate_s": mean("communicate_s"),
            "mean_decode_s": mean("decode_s"),
            "predicted_step_s": mean("step_s") * 0.95,
            "steps": steps,
            "wall_s": steps * mean("step_s"),
            "summary": {
                "best_accuracy": max(v["accuracy"] for v in values),
                # the steps to fp32's final accuracy, at this run's pace
                "time_to_target_s": 0.9 * steps * mean("step_s"),
            },
        }
    return payload | overrides


class _Poster(Protocol):
    def post(self, url: str, *, json: Any, **kwargs: Any) -> Any: ...


def seed_runs(
    client: _Poster,
    *,
    schemes: tuple[str, ...] = SCHEMES,
    seeds: int = 1,
    steps: int = 100,
    prefix: str = "/api/v1",
    headers: dict[str, str] | None = None,
    names: tuple[str, ...] = METRIC_NAMES,
    **payload_overrides: Any,
) -> list[dict[str, Any]]:
    """Create a finished run per scheme and seed, with ``steps`` steps of each of ``names``
    (``REPORTER_METRIC_NAMES`` for everything the training reporter posts).

    ``client`` is anything with an httpx-style ``post``: a ``TestClient`` (keep the
    default ``prefix``) or ``ApiServer.client()`` (whose base URL already ends in
    ``/api/v1``: pass ``prefix=""``). Returns the created runs as the API sent them.
    """
    runs = []
    for scheme in schemes:
        for seed in range(seeds):
            body = run_payload(scheme, seed=seed, steps=steps, **payload_overrides)
            response = client.post(f"{prefix}/runs", json=body, headers=headers)
            response.raise_for_status()
            run = response.json()
            points = metric_points(scheme, steps=steps, bits=run["bits"], seed=seed, names=names)
            per_batch = max(1, 9_000 // len(names))  # under the 10,000-value cap
            for first in range(0, len(points), per_batch):
                batch = {"points": points[first : first + per_batch]}
                client.post(
                    f"{prefix}/runs/{run['id']}/metrics", json=batch, headers=headers
                ).raise_for_status()
            runs.append(run)
    return runs
