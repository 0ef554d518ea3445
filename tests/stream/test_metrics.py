"""Each stage's /metrics: served on loopback, in Prometheus' text format, conventional names."""

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from mfvan.stream.metrics import Metrics


def test_metrics_are_served_on_loopback_with_conventional_names():
    m = Metrics("spot")
    m.frames_in.labels("spot", "cam1").inc(3)
    m.dropped.labels("spot", "cam1", "malformed").inc()
    m.end_to_end.labels("spot", "cam1").observe(0.012)
    server, port = m.serve(0)
    try:
        assert server.server_address[0] == "127.0.0.1"
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        server.shutdown()
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    ours = {n for n in families if not n.startswith(("process_", "python_"))}
    assert all(name.startswith("mfvan_") for name in ours)
    assert families["process_cpu_seconds"].samples[0].value > 0, "the process collector"
    assert "python_info" in families
    (info,) = families["mfvan_build_info"].samples
    assert info.labels["version"] and info.labels["model"] == "" and info.value == 1
    counters = [f for f in families.values() if f.type == "counter"]
    assert counters and all(
        s.name.endswith(("_total", "_created")) for f in counters for s in f.samples
    )
    assert all(
        f.name.endswith("_seconds")
        for f in families.values()
        if f.type == "histogram" and f.name != "mfvan_batch_size"
    )
    (sample,) = [s for s in families["mfvan_frames_in"].samples if s.name.endswith("_total")]
    assert sample.value == 3 and sample.labels == {"stage": "spot", "stream": "cam1"}
    drop = [s for s in families["mfvan_frames_dropped"].samples if s.name.endswith("_total")]
    assert drop[0].labels["reason"] == "malformed"


def test_half_open_connections_cannot_exhaust_a_stages_metrics_port(monkeypatch):
    """Slowloris: 200 connections that never finish their request. The server makes at
    most `MAX_CONNECTIONS` threads (before: one per connection, never timed out: 6 ->
    4,269 threads), cuts each off after `TIMEOUT_S`, and answers /metrics again once they
    are gone."""
    import socket
    import threading
    import time
    import urllib.request

    from mfvan.stream.metrics import Metrics, Server

    monkeypatch.setattr(Server, "TIMEOUT_S", 1.0)
    server, port = Metrics("spot").serve(0)
    before = threading.active_count()
    hogs = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            hogs.append(s)
        time.sleep(0.3)
        assert threading.active_count() <= before + Server.MAX_CONNECTIONS
        assert server.refused > 100, "the rest closed at once, no thread made"
        time.sleep(Server.TIMEOUT_S + 1.0)  # each is cut off
        answer = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b"mfvan_" in answer
        assert threading.active_count() <= before + 1
    finally:
        for s in hogs:
            s.close()
        server.shutdown()


def test_a_client_gone_before_its_answer_is_no_traceback(capfd):
    """`make demo` polls /ready and gives up on slow answers: a client that closes before
    the answer was written made the server print a BrokenPipeError traceback (20 lines
    each). Now it is that client's loss alone, and nothing is printed."""
    import socket
    import struct
    import time
    import urllib.request

    from mfvan.stream.metrics import Metrics

    server, port = Metrics("spot").serve(0)
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            s.close()  # at once, with a reset: the answer meets a closed socket
        time.sleep(1.0)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/live", timeout=5).status == 200
    finally:
        server.shutdown()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Broken pipe" not in err, err[-2000:]
