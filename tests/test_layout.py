"""The layout's rules, checked: which sub-package may import which.

    kernels  imports nothing of mfvan
    model    imports only mfvan.kernels
    stream   imports only mfvan.kernels
    deploy   imports anything

Each rule is stated in its package's `__init__.py`; this test reads every module's syntax
tree (imports inside functions included) so that a forbidden import fails here, not in a
reader's head.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "kernels": {"kernels"},
    "model": {"model", "kernels"},
    "stream": {"stream", "kernels"},
}


def imported_packages(path: Path, package: str) -> set[tuple[str, int]]:
    """(sub-package of mfvan, line) for every import of mfvan in `path`; relative imports
    are resolved against `package` (the file's own sub-package, e.g. "model.data")."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb from this file's package
                parts = package.split(".")
                keep = len(parts) - node.level + 1  # 0: the root package itself
                if keep < 0:
                    raise AssertionError(f"{path}:{node.lineno}: relative import above mfvan")
                base = parts[:keep]
                names = [".".join(["mfvan", *base, *([node.module] if node.module else [])])]
            else:
                names = [node.module or ""]
                if node.module == "mfvan":  # from mfvan import stream, model, ...
                    names = [f"mfvan.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "mfvan" or name.startswith("mfvan."):
                sub = name.split(".")[1] if "." in name else "mfvan (the root package)"
                found.add((sub, node.lineno))
    return found


def violations(root: Path) -> list[str]:
    out = []
    for top, allowed in ALLOWED.items():
        for path in sorted((root / top).rglob("*.py")):
            package = ".".join(path.relative_to(root).parent.parts)
            for sub, line in sorted(imported_packages(path, package)):
                if sub not in allowed:
                    rel = path.relative_to(root)
                    out.append(
                        f"{rel}:{line} imports mfvan.{sub}; {top} may import only "
                        f"{', '.join('mfvan.' + a for a in sorted(allowed))}"
                    )
    return out


def test_every_package_imports_only_what_its_rule_allows():
    assert violations(ROOT) == []


@pytest.mark.parametrize(
    "where, line",
    [
        ("kernels/extra.py", "from mfvan.model import mfvan\n"),
        ("model/extra.py", "import mfvan.stream.protocol\n"),
        ("stream/extra.py", "def f():\n    from mfvan.deploy import cli\n"),
        ("model/data/extra.py", "from ...stream import protocol\n"),
        ("stream/extra.py", "from mfvan import model\n"),
    ],
)
def test_a_forbidden_import_is_found(tmp_path, where, line):
    for top in ALLOWED:
        (tmp_path / top).mkdir()
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).write_text(line)
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(where), found


def test_an_allowed_import_is_not_reported(tmp_path):
    for top in ALLOWED:
        (tmp_path / top).mkdir()
    (tmp_path / "model" / "data").mkdir()
    (tmp_path / "model" / "data" / "ok.py").write_text(
        "from mfvan.kernels import flow\nfrom ..losses import x\nfrom . import casme2\n"
    )
    (tmp_path / "stream" / "ok.py").write_text("from .protocol import encode\n")
    assert violations(tmp_path) == []


def test_building_the_command_line_imports_neither_torch_nor_numba():
    """Every stage process builds the whole parser: importing torch there cost each ingest
    and spot process 4 s of start and a few hundred MB (`mfvan --help` took 4.9 s; 0.8 s
    without)."""
    import subprocess
    import sys

    probe = (
        "import sys; from mfvan.deploy.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'numba', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# The functions still over the limits below (issue 37 split the others: 14 over 80 lines
# and 14 with more than 7 parameters before it). A new one fails; one split comes off.
LONG_YET: set[str] = set()
MANY_PARAMETERS_YET: set[str] = set()
NUMBA = {"_flow", "_solve_level"}  # Numba kernels take their arrays one by one
MAX_LINES, MAX_PARAMETERS = 80, 7


def function_sizes(root: Path) -> list[tuple[str, int, int]]:
    """(place, lines, parameters) of every function outside tests/ (self and cls not
    counted as parameters)."""
    out = []
    for top in ALLOWED.keys() | {"deploy"}:
        for path in sorted((root / top).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for cls in [None, *[n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]]:
                body = tree.body if cls is None else cls.body
                for node in body:
                    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        continue
                    a = node.args
                    names = [x.arg for x in a.posonlyargs + a.args]
                    n = len(names) + len(a.kwonlyargs) + (a.vararg is not None)
                    n += (a.kwarg is not None) - (names[:1] in (["self"], ["cls"]))
                    name = node.name if cls is None else f"{cls.name}.{node.name}"
                    out.append((f"{path.relative_to(root)}:{node.lineno} {name}",
                                node.end_lineno - node.lineno + 1, n))  # fmt: skip
    return out


def test_functions_stay_short_and_take_few_parameters():
    sizes = function_sizes(ROOT)
    long = [(p, n) for p, n, _ in sizes if n > MAX_LINES]
    many = [(p, k) for p, _, k in sizes if k > MAX_PARAMETERS and p.split()[-1] not in NUMBA]
    print(f"over {MAX_LINES} lines: {len(long)}, over {MAX_PARAMETERS} parameters: {len(many)}")
    assert {p.split()[-1] for p, _ in long} <= LONG_YET, long
    assert {p.split()[-1] for p, _ in many} <= MANY_PARAMETERS_YET, many
