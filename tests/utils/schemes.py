"""The schemes as the tests name them, from the registry and the schemes' own declarations.

Nothing here lists a scheme by hand: a newly registered quantizer joins every list whose
declaration it shares, so the tests that run "every scheme" run it too. ``VARIANTS``
adds settings that change a scheme's level set enough to be tested as a scheme of its
own.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from typing import Any

from lightning_quant.collectives import Collective
from lightning_quant.hooks import available_schemes
from lightning_quant.quantizers import Quantizer, available_quantizers, get_quantizer
from lightning_quant.quantizers import base as registry
from lightning_quant.quantizers.bucketed import BucketedQuantizer

TEST_SCHEMES_ENV = "LQ_TEST_SCHEMES"  # "name=module:Class,..." that ranks register too

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "nuqsgd_reference": ("nuqsgd", {"levels": "reference"}),
}


def make(scheme: str, **config: Any) -> Quantizer:
    """Build the quantizer a test scheme names, with ``config`` on top of its preset."""
    name, preset = VARIANTS.get(scheme, (scheme, {}))
    return get_quantizer(name, **{**preset, **config})


def registry_name(scheme: str) -> tuple[str, dict[str, Any]]:
    """The registry name and preset settings of a test scheme (for ``make_comm_hook``)."""
    return VARIANTS.get(scheme, (scheme, {}))


def takes(scheme: str, **config: Any) -> bool:
    """Whether the scheme takes these settings (a width it has, say)."""
    try:
        make(scheme, **config)
    except ValueError:
        return False
    return True


QUANTIZERS = available_quantizers()
ALL = [*QUANTIZERS, *VARIANTS]
STOCHASTIC = [name for name in ALL if make(name).lossy]  # quantizers, not float casts
FLOATS = [name for name in ALL if not make(name).lossy]
SHARED_SCALE = [name for name in ALL if make(name).shared_scale]
BUCKETED = [name for name in ALL if isinstance(make(name), BucketedQuantizer)]
SCATTERING = [n for n in STOCHASTIC if Collective.REDUCE_SCATTER in make(n).collectives]
AUTO = "auto"  # chooses among the others per bucket (hooks/auto.py)
PEERS = [n for n in available_schemes() if n not in (*QUANTIZERS, AUTO)]  # PyTorch's hooks


def with_widths(names: list[str], widths: tuple[int, ...]) -> list[tuple[str, int]]:
    """``(name, bits)`` for every width each scheme takes: parametrizations leave out what
    cannot run instead of skipping it."""
    return [(name, bits) for name in names for bits in widths if takes(name, bits=bits)]


def lowest_width(name: str) -> int:
    """The narrowest width a stochastic scheme takes (2 bits but for lanes that need 4...)."""
    return next(bits for bits in range(2, 9) if takes(name, bits=bits))


@contextlib.contextmanager
def registered(name: str, cls: type[Quantizer]) -> Iterator[None]:
    """Register ``cls`` as scheme ``name`` for the block, here and in the ranks the block
    starts (:func:`register_test_schemes`), as a new module's one registry line would."""
    registry.register_quantizer(name)(cls)
    previous = os.environ.get(TEST_SCHEMES_ENV)
    entry = f"{name}={cls.__module__}:{cls.__qualname__}"
    os.environ[TEST_SCHEMES_ENV] = ",".join(filter(None, [previous, entry]))
    try:
        yield
    finally:
        registry._REGISTRY.pop(name, None)
        if previous is None:
            os.environ.pop(TEST_SCHEMES_ENV, None)
        else:
            os.environ[TEST_SCHEMES_ENV] = previous


def register_test_schemes() -> None:
    """In a rank: register the schemes a test registered with :func:`registered`."""
    for entry in filter(None, os.environ.get(TEST_SCHEMES_ENV, "").split(",")):
        name, target = entry.split("=")
        module, qualname = target.split(":")
        if name not in available_quantizers():
            registry.register_quantizer(name)(getattr(importlib.import_module(module), qualname))
