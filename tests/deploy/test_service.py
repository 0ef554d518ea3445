"""The systemd unit and its environment file: systemd's own checker accepts the unit,
and every variable the environment file names is one mfvan reads."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest
import yaml
from helpers import REPO

from mfvan.deploy import cli
from mfvan.deploy.runtime import config

OPS = REPO / "deploy" / "ops"
SYSTEMD = OPS / "systemd"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_accepts_the_unit(tmp_path):
    mfvan = Path(sys.executable).parent / "mfvan"  # the unit's ExecStart must exist
    unit = tmp_path / "mfvan.service"
    unit.write_text(
        (SYSTEMD / "mfvan.service").read_text().replace("/opt/mfvan/bin/mfvan", str(mfvan))
    )
    run = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert run.returncode == 0 and run.stderr.strip() == "", run.stderr


def test_the_environment_file_names_only_variables_mfvan_reads():
    names = set(re.findall(r"^#?\s*(MFVAN_[A-Z_]+)=", (SYSTEMD / "mfvan.env").read_text(), re.M))
    flags = {
        "MFVAN_" + dest.upper()
        for dest in config._actions(config.subparser(cli.build_parser(), "run"))
    }
    assert names and names <= flags | {"MFVAN_LOG", "MFVAN_METRICS_HOST"}, names - flags


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_each_dockerfile_copies_what_the_package_is_built_from(dockerfile):
    """Docker cannot run here (no daemon): the files are checked for consistency only."""
    copied = set(re.findall(r"^COPY (\S+)", (REPO / dockerfile).read_text(), re.M))
    copied = {p for c in copied for p in c.split()}
    package_dirs = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
            "package-dir"
        ].values()
    )
    assert {d.split("/")[0] for d in package_dirs} <= copied
    assert "pyproject.toml" in copied and all((REPO / c).exists() for c in copied)


def test_compose_mounts_files_that_exist():
    compose = yaml.safe_load((OPS / "compose.yaml").read_text())
    assert set(compose["services"]) == {"mfvan", "prometheus", "grafana"}
    named = set(compose.get("volumes", {}))
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in named or (OPS / source).exists(), volume


def test_compose_keeps_the_store_and_publishes_events_only_with_curve():
    compose = yaml.safe_load((OPS / "compose.yaml").read_text())
    mfvan = compose["services"]["mfvan"]
    assert "mfvan-data:/var/lib/mfvan" in mfvan["volumes"]
    toml = tomllib.loads((OPS / "mfvan.toml").read_text())
    assert Path(toml["db"]).parent == Path("/var/lib/mfvan"), "the store is on the volume"
    env = mfvan["environment"]
    assert env["MFVAN_EVENTS"].startswith("tcp://") and env["MFVAN_KEYS"].startswith(
        "/var/lib/mfvan/"
    ), "events leave the container encrypted"
    assert all(p.startswith("127.0.0.1:") for p in mfvan["ports"]), "on the host's loopback"
    assert "/ready" in " ".join(mfvan["healthcheck"]["test"])
    assert compose["services"]["prometheus"]["depends_on"]["mfvan"] == {
        "condition": "service_healthy"
    }
