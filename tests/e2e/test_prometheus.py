"""A real Prometheus server scrapes a stage's real /metrics and answers queries on them."""

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from helpers import free_port

from mfvan.stream.metrics import Metrics

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="the prometheus server is not installed (apt: prometheus; .ci/run does it)",
    ),
]


def _query(port: int, promql: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_a_stage(tmp_path):
    m = Metrics("spot")
    m.frames_in.labels("spot", "cam1").inc(42)
    m.stage_seconds.labels("spot", "cam1").observe(0.003)
    server, target = m.serve(0)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: mfvan-spot\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
    )
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = []
        deadline = time.monotonic() + 60
        while not result and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                result = _query(port, 'mfvan_frames_in_total{stage="spot",stream="cam1"}')
            except OSError:
                continue  # not listening yet
        assert result, "Prometheus scraped the stage within 60 s"
        assert float(result[0]["value"][1]) == 42
        assert _query(port, 'up{job="mfvan-spot"}')[0]["value"][1] == "1"
        p = _query(port, "histogram_quantile(0.5, rate(mfvan_stage_seconds_bucket[1m]))")
        assert isinstance(p, list)
    finally:
        prom.terminate()
        prom.wait(timeout=10)
        server.shutdown()
