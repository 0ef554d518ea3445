"""The shipped Prometheus configuration, alert rules and Grafana dashboard, checked with
Prometheus' own tools and run against a real Prometheus scraping a running pipeline."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from helpers import REPO, free_port
from test_prometheus import _query

PROM = REPO / "deploy" / "ops" / "prometheus"
DASHBOARD = REPO / "deploy" / "ops" / "grafana" / "mfvan.json"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (apt: prometheus; .ci/run does it)",
)


@needs_promtool
@pytest.mark.parametrize(
    "argv",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],  # each alert fires when it should, only then
    ],
)
def test_promtool_accepts_the_shipped_files(argv):
    run = subprocess.run(["promtool", *argv], cwd=PROM, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_shipped_scrape_target_is_mfvan_runs_default_port():
    from mfvan.deploy.runtime.stage import DEFAULT_PORTS

    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    (group,) = config["scrape_configs"][0]["static_configs"]
    assert group["targets"] == [f"127.0.0.1:{DEFAULT_PORTS['run']}"], "one endpoint for the run"


def _dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p["targets"]]


def _finite(result: list) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


@pytest.mark.slow
@pytest.mark.prometheus
@pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="the prometheus server is not installed (apt: prometheus; .ci/run does it)",
)
def test_every_dashboard_query_returns_data_from_a_running_pipeline(tmp_path):

    base = 19600 + os.getpid() % 300
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mfvan.deploy.cli",
            "run",
            "--source",
            "synth://?fps=50&seed=3&micro=8",
            "--runtime-dir",
            str(tmp_path / "rt"),
            "--metrics-base-port",
            str(base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROM / "alerts.yml")]
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{base - 1}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    queries = [
        (title, expr.replace("$__rate_interval", "30s").replace("$stream", ".*"))
        for title, expr in _dashboard_queries()
    ]
    empty = queries
    try:
        deadline = time.monotonic() + 150
        while empty and time.monotonic() < deadline:
            time.sleep(2)
            try:
                empty = [(t, q) for t, q in queries if not _finite(_query(port, q))]
            except OSError:
                continue  # Prometheus is not listening yet
        assert not empty, f"queries without data: {empty}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as r:
            groups = json.load(r)["data"]["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        shipped = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
        assert len(rules) == sum(len(g["rules"]) for g in shipped)
        assert all(rule["health"] == "ok" for rule in rules), "every alert evaluates"
        up = _query(port, 'up{job="mfvan"}')
        assert [r["value"][1] for r in up] == ["1"], "the run's one endpoint"
        stages = _query(port, "mfvan_stage_up")
        assert sorted(r["metric"]["stage"] for r in stages if r["value"][1] == "1") == [
            "ingest",
            "recognize",
            "spot",
        ], "every stage's metrics, through the run's endpoint"
        cpu = _query(port, "rate(process_cpu_seconds_total[30s])")
        assert {r["metric"]["process"] for r in cpu} >= {"run", "recognize"}
    finally:
        prom.terminate()
        run.send_signal(signal.SIGTERM)
        prom.wait(timeout=10)
        run.wait(timeout=30)
