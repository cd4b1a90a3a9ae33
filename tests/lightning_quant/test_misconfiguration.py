"""Settings that would silently do nothing, or harm, give an error or a warning."""

import inspect
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from lightning_quant import QuantizedDDPStrategy
from lightning_quant.collectives import Collective
from lightning_quant.hooks.groups import use_hierarchy
from lightning_quant.quantizers import DQSGDPolicy, get_quantizer
from tests.utils.ranks import run_ranks

WORKERS = "tests.lightning_quant.ddp_workers"
README = Path(__file__).parents[2] / "README.md"

pytestmark = pytest.mark.timeout(240)


def test_a_hook_built_before_the_process_group_says_what_to_call_first(tmp_path) -> None:
    results = run_ranks(f"{WORKERS}:hook_before_process_group", 3, tmp_path)
    for rank, errors in enumerate(results):
        assert "built before torch.distributed.init_process_group" in errors["early"]
        assert "call torch.distributed.init_process_group first" in errors["early"]
        if rank < 2:  # a state of a two-rank group bound to a three-rank model
            assert "built for 2 rank(s), but the model reduces over 3" in errors["other_world"]


@pytest.mark.parametrize(("world", "per_node"), [(4, 4), (4, 1), (1, 1)])
def test_hierarchical_true_without_nodes_of_several_ranks_is_turned_off(world, per_node, caplog):
    with caplog.at_level(logging.WARNING, logger="lightning_quant.hooks.state"):
        assert use_hierarchy(True, world, per_node) is False
    assert len(caplog.records) == 1 and "turned off" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lightning_quant.hooks.state"):
        assert use_hierarchy("auto", world, per_node) is False
        assert use_hierarchy(True, 4, 2) is True and use_hierarchy("auto", 4, 2) is True
    assert not caplog.records  # auto says nothing: it is what it was asked to decide


def test_ranks_per_node_comes_from_the_launcher_or_the_host_names(tmp_path) -> None:
    launched = run_ranks(f"{WORKERS}:detected_layout", 4, tmp_path / "env", local_world_size="2")
    assert launched[0]["node_of"] == (0, 0, 1, 1)
    assert launched[0]["hierarchical"] is True  # auto: 2 nodes of 2 ranks
    one_host = run_ranks(f"{WORKERS}:detected_layout", 3, tmp_path / "hosts", local_world_size=None)
    for rank in one_host:  # one machine: nothing leaves the node, and nothing to nest
        assert rank["node_of"] == (0, 0, 0) and rank["hierarchical"] is False
        assert rank["stats"]["sent_bytes"] > 0 and rank["stats"]["inter_node_bytes"] == 0


def test_dqsgd_warns_once_when_its_rule_leaves_the_configured_width() -> None:
    q = get_quantizer("dqsgd", bits=4, target_error=1e-6, total_steps=10)
    policy = DQSGDPolicy(q.config)
    assert policy.choose(None) == 4  # the first step: no norm yet
    with pytest.warns(UserWarning, match=r"bits=4 set only the first step's width.*chose 8"):
        assert policy.choose(1.0) == 8
    with warnings.catch_warnings(action="error"):
        assert policy.choose(1.0) == 8  # said once


def test_dqsgd_says_nothing_while_the_rule_keeps_the_width() -> None:
    q = get_quantizer("dqsgd", bits=8, target_error=1e-6, total_steps=10)
    policy = DQSGDPolicy(q.config)
    with warnings.catch_warnings(action="error"):
        policy.choose(None)
        assert policy.choose(1.0) == 8


def test_global_qsgd_warns_when_its_lanes_leave_fewer_than_three_levels() -> None:
    q = get_quantizer("global_qsgd", bits=4)
    with pytest.warns(UserWarning, match=r"4 bits on 3 ranks leaves each worker 2 level\(s\) "
                      r"\(floor\(15/6\)\).*use bits=8 \(42 levels\)"):  # fmt: skip
        q.check_reduction(3, Collective.ALLREDUCE)
    with warnings.catch_warnings(action="error"):
        q.check_reduction(2, Collective.ALLREDUCE)  # 3 levels
        q.check_reduction(3, Collective.REDUCE_SCATTER)  # full-width lanes
        get_quantizer("global_qsgd", bits=8).check_reduction(42, Collective.ALLREDUCE)


def test_binding_compiles_the_codec_before_the_first_step(tmp_path) -> None:
    """In a fresh process with an empty Numba cache, the kernels are compiled by ``bind``."""
    script = (
        "import torch\n"
        "from lightning_quant.hooks import QuantizedCommState\n"
        "from lightning_quant.quantizers.kernels import _cpu as cpu\n"
        "before = len(cpu.fused_tasks.signatures) + len(cpu.decode_tasks.signatures)\n"
        "QuantizedCommState('qsgd', bits=4).bind(torch.nn.Linear(64, 64))\n"
        "after = len(cpu.fused_tasks.signatures) + len(cpu.decode_tasks.signatures)\n"
        "print(before, after)\n"
    )
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "2"]


def test_the_readme_option_list_shows_the_strategy_defaults() -> None:
    block = README.read_text().split("strategy = QuantizedDDPStrategy(")[1].split("\n)")[0]
    shown = dict(re.findall(r"^\s+(\w+)=(.+?),\s", block + "\n", flags=re.M))
    defaults = inspect.signature(QuantizedDDPStrategy).parameters
    examples = {"quantizer_config", "report_to"}  # shown with an example value
    for name, value in shown.items():
        assert name in defaults, name
        if name not in examples:
            assert eval(value) == defaults[name].default, (name, value)  # noqa: S307
    assert set(defaults) - set(shown) <= {"ddp_kwargs"}
