"""The distribution: one wheel, four sub-packages under `mfvan`, one console script."""

import subprocess
import sys
import zipfile

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from helpers import REPO

SUBPACKAGES = ("mfvan.model", "mfvan.kernels", "mfvan.stream", "mfvan.deploy")


@pytest.mark.slow
def test_a_built_wheel_installs_and_imports_all_four_subpackages(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
    )
    (wheel,) = tmp_path.glob("mfvan-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.split("/")[0] in ("model", "kernels", "stream", "deploy") for n in names), (
        "the wheel must not install generic top-level packages"
    )
    for data in ("templates/cameras.html", "templates/history.html", "static/app.js"):
        assert f"mfvan/deploy/web/{data}" in names, f"the web view's {data} ships"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mfvan = mfvan.deploy.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
    )
    assert "mfvan/__init__.py" in names and not any("namespace" in n for n in names)
    code = "import importlib\n" + "".join(
        f"print(importlib.import_module('{m}').__file__)\n" for m in SUBPACKAGES
    )
    code += "import mfvan\nassert mfvan.subscribe.__module__ == 'mfvan.stream.client'\n"
    # Run from elsewhere with the wheel's folder first on the path: the repo's folders and
    # the editable install must not be what gets imported.
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(out) == 4
    assert all(path.startswith(str(site)) for path in out), out


def test_every_source_folder_is_a_listed_package():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    root = config["package-dir"]["mfvan"]  # the namespace's own __init__ (the client API)
    assert "mfvan" in listed and (REPO / root / "__init__.py").exists()
    for top in ("model", "kernels", "stream", "deploy"):
        assert config["package-dir"][f"mfvan.{top}"] == top
        for init in (REPO / top).rglob("__init__.py"):
            if init.parent == REPO / root:
                continue
            dotted = ".".join(("mfvan", *init.parent.relative_to(REPO).parts))
            assert dotted in listed, f"{dotted} is missing from [tool.setuptools] packages"


def test_mfvan_help_lists_its_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "mfvan.deploy.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "synth" in out


def test_version_from_the_command_module_and_package():
    from importlib.metadata import version

    installed = version("mfvan")
    for argv in (["-m", "mfvan", "--version"], ["-m", "mfvan.deploy.cli", "--version"]):
        out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == f"mfvan {installed}"
    import mfvan

    assert mfvan.__version__ == installed


def test_python_m_mfvan_is_the_mfvan_command():
    out = subprocess.run(
        [sys.executable, "-m", "mfvan", "subscribe", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("usage: mfvan subscribe")


def test_bash_completion_completes_commands_and_flags():
    script = subprocess.run(
        [sys.executable, "-m", "mfvan", "completion", "bash"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    probe = (
        "source /dev/stdin; "
        'COMP_WORDS=(mfvan ana); COMP_CWORD=1; _shtab_mfvan; echo "${COMPREPLY[@]}"; '
        'COMP_WORDS=(mfvan run --streams-p); COMP_CWORD=2; _shtab_mfvan; echo "${COMPREPLY[@]}"'
    )
    out = subprocess.run(["bash", "-c", probe], input=script, capture_output=True, text=True)
    assert out.stdout.split("\n")[:2] == ["analyze", "--streams-per-spot"], out.stderr


def test_every_flag_states_its_default_at_most_once():
    """A help text that says its own default got argparse's too: `(default: ...)
    (default: None)`."""
    from mfvan.deploy.cli import COMMANDS, build_parser
    from mfvan.deploy.runtime.config import subparser

    parser = build_parser()
    for name in COMMANDS:
        for action in subparser(parser, name)._actions:
            formatter = subparser(parser, name)._get_formatter()
            text = formatter._expand_help(action) if action.help else ""
            assert text.count("default") <= 1, f"mfvan {name} {action.option_strings}: {text}"
            assert "(default: None)" not in text and "(default: False)" not in text


def test_a_bad_flag_value_is_refused_with_a_message(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mfvan.deploy.cli",
            "synth",
            "--config",
            "tiny",
            "--out",
            str(tmp_path),
            "--fps",
            "10",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "fps must be at least 25" in run.stderr
    assert "Traceback" not in run.stderr


def test_the_cli_offers_every_registered_dataset():
    from mfvan.deploy.cli import build_parser
    from mfvan.model.data.datasets import LOADERS

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("train", "eval"):
        flag = next(a for a in commands[name]._actions if a.dest == "dataset")
        assert tuple(flag.choices) == tuple(LOADERS), name
