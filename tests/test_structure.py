"""The shape of the code: each scheme's knowledge in its own module, and small modules."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest

from lightning_quant.hooks import available_schemes, get_scheme
from lightning_quant.hooks.schemes import QuantizerScheme

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lightning_quant", "api", "dashboard", "benchmarks", "app")
MAX_LINES = 400

# Where a scheme's name may appear outside its own module, and why.
ALLOWED: dict[str, tuple[set[str], str]] = {
    "lightning_quant/strategy.py": ({"qsgd"}, "the strategy's default scheme"),
    "lightning_quant/hooks/state.py": ({"qsgd"}, "the comm state's default scheme"),
    "lightning_quant/hooks/hook.py": ({"fp32"}, "what goes uncompressed"),
    "lightning_quant/hooks/peers.py": ({"fp16", "bf16", "fp32"}, "what PyTorch's hooks send"),
    "benchmarks/sweep/plan.py": ({"fp32"}, "the baseline every ratio is to"),
    "dashboard/browser.py": ({"fp32"}, "the comparison's default baseline"),
    "benchmarks/sweep/cli.py": (set(available_schemes()), "the default --schemes list"),
    "benchmarks/live.py": (set(available_schemes()), "its default --schemes list"),
    "app/demo.py": (set(available_schemes()), "the demo's schemes"),
    # benchmarks of one paper's or one issue's claims name the schemes they measure
    "benchmarks/dqsgd_claim.py": ({"qsgd", "dqsgd"}, "DQ-SGD's claim against QSGD"),
    "benchmarks/nuqsgd_levels.py": ({"qsgd", "qsgd_inf", "nuqsgd"}, "NUQSGD's claim"),
    "benchmarks/error_feedback.py": ({"qsgd"}, "the issue's GPT-2 run"),
    "benchmarks/coding.py": ({"qsgd"}, "the goals' scheme: 4-bit qsgd's bits and coder speed"),
    "benchmarks/codec.py": (set(available_schemes()), "the goal's schemes"),
    "benchmarks/gpu_check.py": (set(available_schemes()), "the goal's schemes"),
    "benchmarks/api_ingest.py": (set(available_schemes()), "names of made-up runs"),
    "lightning_quant/hooks/auto.py": (
        {"fp32", "fp16", "bf16", "nuqsgd"},
        "auto's candidates: the uncompressed and cast ones, and the scheme buckets start on",
    ),
    "benchmarks/auto_report.py": ({"auto"}, "the goals compare auto with the rest"),
}
# "auto" is also the word for "let the library choose" (collective, hierarchical): only a
# literal that names the scheme counts, and ``auto_scheme.py`` is where it is defined
KEYWORDS = {"auto"}


def _own_module(name: str) -> str:
    scheme = get_scheme(name)
    owner = type(scheme.quantizer) if isinstance(scheme, QuantizerScheme) else type(scheme)
    return str(Path(inspect.getfile(owner)).resolve().relative_to(ROOT))


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def named_schemes(path: Path, names: set[str]) -> dict[str, list[int]]:
    """Return the scheme names ``path``'s string literals hold (a name, or a comma list of
    them; docstrings are prose and left out), with their lines."""
    tree = ast.parse(path.read_text())
    prose = _docstrings(tree)
    found: dict[str, list[int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in prose:
                continue
            for part in node.value.split(","):
                if part.strip() in names:
                    found.setdefault(part.strip(), []).append(node.lineno)
    return found


def test_no_scheme_is_named_outside_its_module_and_the_documented_exceptions() -> None:
    names = set(available_schemes()) - KEYWORDS
    owners = {name: _own_module(name) for name in names}
    stray = []
    for path in _sources():
        relative = str(path.relative_to(ROOT))
        allowed, _why = ALLOWED.get(relative, (set(), ""))
        for name, lines in named_schemes(path, names).items():
            if owners[name] != relative and name not in allowed:
                stray.append(f"{relative}:{lines[0]} names {name!r}")
    assert not stray, "\n".join(stray)


def test_the_name_check_sees_a_comparison_and_a_comma_list(tmp_path) -> None:
    code = 'if scheme == "dqsgd":\n    pass\nDEFAULT = "fp32,qsgd"\n"""qsgd in a docstring"""\n'
    (tmp_path / "m.py").write_text('"""doc: qsgd"""\n' + code)
    found = named_schemes(tmp_path / "m.py", {"dqsgd", "qsgd", "fp32"})
    assert found == {"dqsgd": [2], "fp32": [4], "qsgd": [4]}


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


def test_every_allowed_file_exists() -> None:
    missing = [f for f in ALLOWED if not (ROOT / f).exists() and not f.startswith("app/")]
    assert not missing, missing
    assert sys.version_info >= (3, 11)
