"""`mfvan run`'s supervisor without processes: its restart policy on children whose exits
are scripted, and the child commands it plans (the recognizer's flags forwarded as given).
The same supervisor with real processes: tests/e2e/test_run.py."""

from pathlib import Path

import pytest
from helpers import answering

from mfvan.deploy.cli import build_parser
from mfvan.deploy.runtime.stage import Fatal, spotter_params
from mfvan.deploy.runtime.supervisor import Aggregate, Backoff, Child, Supervisor, is_ready, plan
from mfvan.stream.metrics import Metrics


class Scripted(Child):
    """A child whose process exits with the codes given, one run each (None: runs on)."""

    def __init__(self, stage, stream, exits):
        super().__init__(stage, stream, [stage])
        self.exits, self.runs, self.clock = list(exits), 0, 0.0

    def start(self):
        self.proc, self.started = object(), self.clock
        self.runs += 1

    def poll(self):
        if self.proc is None or self.runs > len(self.exits):
            return None
        return self.exits[self.runs - 1]

    def stop(self):
        self.stopped = True


def restarts(metrics, stage, stream):
    return metrics.registry.get_sample_value(
        "mfvan_restarts_total", {"stage": stage, "stream": stream}
    )


def drive(supervisor, children, until, step=0.1):
    """Step the supervisor every `step` s of a clock that is not the wall's; the time at
    which it said stop, or None."""
    now = 0.0
    while now < until:
        for child in children:
            child.clock = now
        if supervisor.step(now):
            return now
        now = round(now + step, 6)
    return None


def test_a_crashing_stage_is_restarted_with_a_doubling_backoff_and_counted():
    m = Metrics("run")
    spot = Scripted("spot", "cam1", [1, 1, 1, None])  # crashes three times, then runs
    ingest = Scripted("ingest", "cam1", [None])
    children = [ingest, spot]
    for child in children:
        child.start()
    sup = Supervisor(children, m.restarts, Backoff(first_s=0.5, most_s=30.0))
    assert drive(sup, children, until=5.0) is None, "a camera that runs on: never stops"
    assert spot.runs == 4 and spot.restarts == 3
    assert restarts(m, "spot", "cam1") == 3
    assert restarts(m, "ingest", "cam1") == 0, "every child's series exists from the start"
    assert spot.backoff == 4.0, "0.5, 1, 2, then 4 for the next crash"


def test_a_finite_source_that_ends_stops_the_run_after_the_drain_time():
    m = Metrics("run")
    ingest = Scripted("ingest", "file", [0])  # a file ended: exit 0
    recognize = Scripted("recognize", "all", [None])
    children = [ingest, recognize]
    for child in children:
        child.start()
    sup = Supervisor(children, m.restarts, Backoff(drain_s=3.0))
    stopped = drive(sup, children, until=10.0)
    assert stopped is not None and abs(stopped - 3.0) < 1e-6, stopped
    assert ingest.runs == 1 and ingest.finished, "an ended source is not restarted"
    assert restarts(m, "ingest", "file") == 0


def test_an_ingest_that_crashes_is_restarted_not_finished():
    m = Metrics("run")
    ingest = Scripted("ingest", "cam1", [1, None])
    ingest.start()
    sup = Supervisor([ingest], m.restarts, Backoff(first_s=0.5))
    assert drive(sup, [ingest], until=2.0) is None
    assert ingest.runs == 2 and not ingest.finished
    assert restarts(m, "ingest", "cam1") == 1


def test_a_fatal_exit_fails_its_stream_once_and_the_other_streams_carry_on():
    """A source that can never work (exit 2: a missing file) is not restarted in a loop:
    its stream fails, its spot stage is stopped, the good stream plays to its end, and
    the run then stops, naming what failed."""
    m = Metrics("run")
    bad_ingest, bad_spot = Scripted("ingest", "bad", [2]), Scripted("spot", "bad", [None])
    good = Scripted("ingest", "good", [None] * 1)
    good.exits = [None]
    recognize = Scripted("recognize", "all", [None])
    children = [bad_ingest, bad_spot, good, recognize]
    for child in children:
        child.start()
    sup = Supervisor(children, m.restarts, Backoff(first_s=0.5, drain_s=1.0))
    assert drive(sup, children, until=5.0) is None, "the good stream runs on"
    assert bad_ingest.runs == 1 and bad_ingest.failed, "never restarted"
    assert getattr(bad_spot, "stopped", False) and bad_spot.finished
    assert sup.failed == ["bad"] and restarts(m, "ingest", "bad") == 0
    good.exits = [0]  # the good file ends: the run stops after the drain
    assert drive(sup, children, until=5.0) is not None


def test_a_fatal_exit_of_the_recognizer_stops_the_run():
    m = Metrics("run")
    ingest, recognize = Scripted("ingest", "cam1", [None]), Scripted("recognize", "all", [2])
    for child in (ingest, recognize):
        child.start()
    sup = Supervisor([ingest, recognize], m.restarts)
    assert drive(sup, [ingest, recognize], until=1.0) == 0.0
    assert sup.failed == ["the recognizer"] and recognize.runs == 1


def test_a_child_that_ran_a_while_starts_its_backoff_over():
    m = Metrics("run")
    spot = Scripted("spot", "cam1", [1, 1, None])
    spot.start()
    sup = Supervisor([spot], m.restarts, Backoff(first_s=0.5, reset_after_s=30.0))
    spot.backoff = 16.0  # as after several quick crashes
    spot.started = -40.0  # it had run 40 s when it crashed
    drive(sup, [spot], until=0.2)
    assert spot.next_start == 0.5, "restarted after first_s, not 16 s"


def test_run_plans_one_ingest_and_spot_per_source_and_forwards_the_recognizers_flags():
    args = build_parser().parse_args(
        [
            "run",
            "--source",
            "synth://?seed=3",
            "--source",
            "cam.mp4",
            "--source",
            "cam.mp4",
            "--backend",
            "torch",
            "--compile",
            "--max-batch",
            "4",
            "--max-wait-ms",
            "2.5",
            "--weights",
            "w.safetensors",
            "--with-crops",
            "--metrics-base-port",
            "9301",
        ]
    )
    children, events = plan(args, Path("/run/x"))
    names = [c.name for c in children]
    assert names == [
        "ingest-synth-3-1",
        "spot-synth-3-1",
        "ingest-cam.mp4-1",
        "spot-cam.mp4-1",
        "ingest-cam.mp4-2",
        "spot-cam.mp4-2",
        "recognize",
    ]
    assert events == "ipc:///run/x/events.ipc"
    rec = children[-1].argv
    given = dict(zip(rec, rec[1:], strict=False))
    assert given["--backend"] == "torch" and given["--max-batch"] == "4"
    assert given["--max-wait-ms"] == "2.5" and given["--weights"] == "w.safetensors"
    assert "--compile" in rec and "--with-crops" in rec
    assert "--cuda-graphs" not in rec and "--insecure" not in rec
    assert rec.count("--in") == 3 and given["--metrics-port"] == "9307"
    # what the recognizer is given, it parses back to the same values
    parsed = build_parser().parse_args(rec)
    assert (parsed.backend, parsed.max_batch, parsed.max_wait_ms) == ("torch", 4, 2.5)
    assert parsed.compile and parsed.with_crops and str(parsed.weights) == "w.safetensors"


def test_streams_per_spot_plans_shared_spot_processes_on_the_same_ports():
    args = build_parser().parse_args(
        ["run", "--metrics-base-port", "9301", "--streams-per-spot", "2"]
        + [a for i in range(5) for a in ("--source", f"synth://?seed={i}")]
    )
    children, _ = plan(args, Path("/run/x"))
    spots = [c for c in children if c.stage == "spot"]
    assert [c.streams for c in spots] == [
        ("synth-0-1", "synth-1-1"),
        ("synth-2-1", "synth-3-1"),
        ("synth-4-1",),
    ]
    assert spots[0].name == "spot-synth-0-1+synth-1-1"
    first = dict(zip(spots[1].argv, spots[1].argv[1:], strict=False))
    assert spots[1].argv.count("--in") == 2 and first["--metrics-port"] == "9306"
    assert [c.argv.count("--in") for c in spots] == [2, 2, 1]
    ingests = [c for c in children if c.stage == "ingest"]
    assert [c.argv[c.argv.index("--metrics-port") + 1] for c in ingests] == [
        "9301",
        "9303",
        "9305",
        "9307",
        "9309",
    ]
    rec = children[-1].argv
    assert rec.count("--in") == 3 and rec[rec.index("--metrics-port") + 1] == "9311"
    # every frames endpoint an ingest binds, exactly one spot process reads
    outs = [c.argv[c.argv.index("--out") + 1] for c in ingests]
    ins = [c.argv[j + 1] for c in spots for j, a in enumerate(c.argv) if a == "--in"]
    assert sorted(outs) == sorted(ins)
    assert all("--measure-hz" not in c.argv for c in children)  # the spotter's own default


def test_named_cameras_are_their_stream_ids_and_only_unnamed_ones_are_derived(monkeypatch):
    monkeypatch.setenv("DESK_URL", "rtsp://10.0.0.9/live")
    args = build_parser().parse_args(
        ["run"]
        + ["--source", "door=rtsp://10.0.0.5/Streaming/Channels/101"]
        + ["--source", "hall=rtsp://10.0.0.6/Streaming/Channels/101"]
        + ["--source", "rtsp://10.0.0.7/s?channel=1&subtype=0"]  # `=` in the query: no name
        + ["--source", "rtsp://10.0.0.8/door"]  # derives a name given above
        + ["--source", "desk=env:DESK_URL"]
    )
    children, _ = plan(args, Path("/run/x"))
    ingests = [c for c in children if c.stage == "ingest"]
    assert [c.stream for c in ingests] == ["door", "hall", "s", "door-3", "desk"]
    assert ingests[0].env["MFVAN_SOURCE"] == "rtsp://10.0.0.5/Streaming/Channels/101"
    assert ingests[2].env["MFVAN_SOURCE"] == "rtsp://10.0.0.7/s?channel=1&subtype=0"
    assert ingests[4].env["MFVAN_SOURCE"] == "rtsp://10.0.0.9/live"
    assert [a for c in ingests for a in c.argv if a.startswith("--stream=")] == [
        f"--stream={c.stream}" for c in ingests
    ]
    spot = next(c for c in children if c.stage == "spot")
    assert spot.streams == ("door",)


def test_a_source_file_named_like_a_flag_or_too_long_for_a_stream_id_still_runs(tmp_path):
    """A file named `-take1.mp4`, or one whose name would give a stream id over 128
    characters: each gets a stream id its ingest takes (before: `argument --stream:
    expected one argument` with a usage dump, and a schema error)."""
    from mfvan.stream.protocol import MAX_STREAM_ID

    long = "interview-" + "x" * 300 + ".mp4"
    args = build_parser().parse_args(
        ["run", "--source", "./-take1.mp4", "--source", long, "--source", "./--.mp4"]
    )
    children, _ = plan(args, tmp_path)
    ingests = [c for c in children if c.stage == "ingest"]
    streams = [c.stream for c in ingests]
    assert streams[0] == "take1.mp4" and streams[2] == "mp4", streams
    assert all(0 < len(s) <= MAX_STREAM_ID and not s.startswith("-") for s in streams)
    assert streams[1].startswith("interview-xxx") and len(streams[1]) <= 100
    for child in ingests:  # each command line parses, with the stream id it was given
        again = build_parser().parse_args(child.argv)
        assert again.stream == child.stream


def test_db_plans_a_recorder_that_subscribes_to_the_events():
    args = build_parser().parse_args(
        ["run", "--source", "a=x.mp4", "--db", "/var/lib/mfvan/e.db", "--max-age-days", "30"]
    )
    children, events = plan(args, Path("/run/x"))
    record = next(c for c in children if c.stage == "record")
    assert children[-1].stage == "recognize", "the recognizer stays last"
    assert record.argv[:4] == ["record", events, "--db", "/var/lib/mfvan/e.db"]
    parsed = build_parser().parse_args(record.argv)
    assert parsed.max_age_days == 30 and parsed.max_gb is None
    bound = build_parser().parse_args(
        ["run", "--source", "a=x.mp4", "--db", "e.db", "--events", "tcp://0.0.0.0:5560"]
    )
    record = next(c for c in plan(bound, Path("/run/x"))[0] if c.stage == "record")
    assert record.argv[1] == "tcp://127.0.0.1:5560", "it connects where the recognizer binds"
    no_db = build_parser().parse_args(["run", "--source", "a=x.mp4"])
    assert all(c.stage != "record" for c in plan(no_db, Path("/run/x"))[0])


def test_mqtt_and_webhooks_plan_a_forward_process_after_the_recognizers_port():
    from mfvan.stream.outputs import secrets_from_env

    args = build_parser().parse_args(
        ["run", "--source", "a=x.mp4", "--source", "b=y.mp4", "--metrics-base-port", "9301"]
        + ["--mqtt", "broker.lan:1884", "--mqtt-qos", "1", "--webhook", "http://h/1"]
        + ["--webhook", "http://h/2"]
    )
    children, events = plan(args, Path("/run/x"))
    (forward,) = [c for c in children if c.stage == "forward"]
    parsed = build_parser().parse_args(forward.argv)
    assert parsed.webhook is None, "a webhook's URL (often a secret) is not on argv"
    secrets_from_env(parsed, forward.env)
    assert parsed.endpoint == events and parsed.mqtt == "broker.lan:1884"
    assert parsed.mqtt_qos == 1 and parsed.webhook == ["http://h/1", "http://h/2"]
    assert parsed.metrics_port == 9306, "after the recognizer's (9305): no port moves"
    assert children[-1].stage == "recognize"


def test_web_plans_a_view_wired_to_every_spot_processes_watch_socket():
    args = build_parser().parse_args(
        ["run", "--source", "a=x.mp4", "--source", "b=y.mp4", "--source", "c=z.mp4"]
        + ["--streams-per-spot", "2", "--metrics-base-port", "9301", "--db", "e.db"]
        + ["--web", "127.0.0.1:8400", "--web-faces"]
    )
    children, events = plan(args, Path("/run/x"))
    spots = [build_parser().parse_args(c.argv) for c in children if c.stage == "spot"]
    assert [s.watch for s in spots] == ["ipc:///run/x/watch-0.ipc", "ipc:///run/x/watch-2.ipc"]
    (web,) = [c for c in children if c.stage == "web"]
    view = build_parser().parse_args(web.argv)
    assert view.bind == "127.0.0.1:8400" and view.events == events and view.faces
    assert view.watch == [s.watch for s in spots] and view.camera == ["a", "b", "c"]
    assert view.metrics == "http://127.0.0.1:9300/metrics", "the run's one endpoint"
    assert str(view.db) == "e.db" and web.metrics_port == "9309", "base + 2N + 2, aggregated"
    ports = [c.metrics_port for c in children if c.metrics_port is not None]
    assert len(ports) == len(set(ports)), "no two children on one port"
    assert children[-1].stage == "recognize"
    plain = build_parser().parse_args(["run", "--source", "a=x.mp4"])
    children, _ = plan(plain, Path("/run/x"))
    assert all(c.stage != "web" for c in children), "no view unless asked"
    assert all("--watch" not in c.argv for c in children), "and no watch socket"


def test_a_camera_name_given_twice_is_refused():
    args = build_parser().parse_args(
        ["run", "--source", "cam1=synth://?seed=1", "--source", "cam1=synth://?seed=2"]
    )
    with pytest.raises(Fatal, match="cam1 given more than once"):
        plan(args, Path("/run/x"))


def test_per_camera_options_reach_their_ingest_only():
    args = build_parser().parse_args(["run", "--source", "a=x.mp4", "--source", "b=y.mp4"])
    args.camera_options = {"a": {"fps": 25, "realtime": True}}
    children, _ = plan(args, Path("/run/x"))
    a, b = (c.argv for c in children if c.stage == "ingest")
    assert a[a.index("--fps") + 1] == "25" and "--realtime" in a
    assert "--fps" not in b and "--realtime" not in b
    parsed = build_parser().parse_args(a)
    assert parsed.fps == 25.0 and parsed.realtime


def test_measure_hz_reaches_every_spot_process_and_parses_back():
    args = build_parser().parse_args(
        ["run", "--measure-hz", "0", "--source", "synth://?seed=1", "--source", "synth://"]
    )
    children, _ = plan(args, Path("/run/x"))
    spots = [c for c in children if c.stage == "spot"]
    assert len(spots) == 2
    for spot in spots:
        parsed = build_parser().parse_args(spot.argv)
        assert parsed.measure_hz == 0.0
        assert spotter_params(parsed).measure_hz == 0.0
    assert spotter_params(build_parser().parse_args(spots[0].argv[:-2])) is None


def test_a_shared_spot_process_outlives_one_failed_stream_and_its_fatal_exit_fails_all():
    m = Metrics("run")
    bad, good = Scripted("ingest", "a", [2]), Scripted("ingest", "b", [None])
    spot = Scripted("spot", "a+b", [None])
    spot.streams = ("a", "b")
    recognize = Scripted("recognize", "all", [None])
    children = [bad, good, spot, recognize]
    for child in children:
        child.start()
    sup = Supervisor(children, m.restarts, Backoff(first_s=0.5))
    assert drive(sup, children, until=2.0) is None
    assert sup.failed == ["a"] and not spot.finished, "b still needs the spot process"
    assert not getattr(spot, "stopped", False)
    # the shared spot process fails fatally: every stream it served fails, b's ingest stops
    spot.exits, spot.runs = [2], 1
    assert drive(sup, children, until=5.0) is not None, "every stream failed: the run stops"
    assert sup.failed == ["a", "b"] and spot.failed
    assert good.finished and getattr(good, "stopped", False)


def test_a_stage_cut_off_mid_answer_is_not_ready_and_not_up():
    """Before: a stage stopping while the run asked its /ready sent the headers and closed
    (http.client.IncompleteRead, not an OSError); the run died with a traceback (seen in
    CI). A real loopback server that answers so, each time it is asked."""
    with answering(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n") as (port, _):
        child = Child("spot", "cam1", ["spot", "--metrics-port", str(port)])
        assert is_ready(child) is False
        registry = Aggregate(Metrics("run").registry, [child]).registry
        up = {"process": "spot-cam1", "stage": "spot"}
        assert registry.get_sample_value("mfvan_stage_up", up) == 0.0


def test_a_plan_the_machine_cannot_hold_is_refused_in_one_line(tmp_path):
    """200 cameras on this box: one line naming what is short, exit status 2, nothing
    started (before: 401 processes planned, 110 started, load 47, none ready after 75 s);
    `--overcommit` goes on (here: only as far as the plan, then stopped)."""
    import os
    import subprocess
    import sys

    toml = tmp_path / "many.toml"
    toml.write_text(
        "".join(f"[cameras.cam{i}]\nsource = 'rtsp://127.0.0.1:9/c{i}'\n" for i in range(200))
    )
    run = subprocess.run(
        [sys.executable, "-m", "mfvan", "run", "--config", str(toml)]
        + ["--runtime-dir", str(tmp_path / "rt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    (line,) = [x for x in run.stderr.splitlines() if "would need" in x]
    assert "401 processes" in line and "--overcommit" in line
    assert f"on {os.cpu_count()}" in line or "GB" in line, line
    assert not (tmp_path / "rt").exists() or not any((tmp_path / "rt").iterdir())


def test_the_capacity_rule_counts_cores_memory_and_descriptors():
    from mfvan.deploy.runtime.capacity import Needs, needs, refusal

    two_cameras = needs(range(7), [50.0, 50.0])
    assert two_cameras == Needs(7, 2100, 1.0, 7 * 8 + 64)
    assert refusal(two_cameras, cores=2, memory_mb=8000) is None, "what the tests run"
    assert "cores of work on 2" in refusal(needs(range(9), [200.0] * 4), 2, 8000)
    assert "GB available" in refusal(needs(range(40), [30.0]), 64, 4000)
