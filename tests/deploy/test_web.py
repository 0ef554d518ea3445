"""The web view (`mfvan web`, `mfvan run --web`): what a spot stage shows watchers, the
view's security, a stalled browser against the pipeline's latency, and the pages in a
real headless Chromium (Debian's chromium and chromium-driver, driven by Selenium; the
`browser` marker). With MFVAN_SCREENSHOTS=1 the browser tests write the README's
screenshots to docs/images/."""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import zmq
from helpers import REPO, free_port, port_open

from mfvan.kernels.facespot import FaceSpotter
from mfvan.stream import protocol, subscribe
from mfvan.stream.watch import Watch

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


VIEW_TOKEN = "the-module-views-token"  # faces on: a token even on loopback


def _get(url: str, headers: dict | None = None, timeout: float = 5.0):
    """(status, headers, body) of a GET, without following redirects; with the module
    view's token unless `headers` are given."""
    if headers is None:
        headers = {"Authorization": f"Bearer {VIEW_TOKEN}"}

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _until(check, timeout: float = 30.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    return None


def _mfvan(*argv, env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mfvan", *argv], env={**os.environ, **(env or {})}, **kw
    )


# ----------------------------------------------------------------------------- watch


def _synth_frames(n: int, seed: int = 3) -> list:
    from itertools import islice

    from mfvan.deploy.runtime.synth_source import SynthSource

    return list(islice(SynthSource(f"synth://?fps=30&seed={seed}"), n))


def test_watch_topics_name_their_kind_and_camera_exactly():
    assert protocol.topic("cam1", "preview") == b"preview:cam1\0"
    assert protocol.topic("cam1", "status") == b"status:cam1\0"
    assert protocol.topic("cam1") == b"cam1\0"
    frames = protocol.encode("status", "cam1", 0, state="tracking", signal=[0.1, None], t_status=1)
    assert frames[0] == b"status:cam1\0"
    assert protocol.decode(frames).fields["signal"] == [0.1, None]
    frames[0] = b"cam1\0"  # a status under an event's topic is not a status of ours
    with pytest.raises(protocol.Malformed, match="topic"):
        protocol.decode(frames)
    with pytest.raises(protocol.Malformed, match="signal"):
        protocol.encode("status", "cam1", 0, state="x", signal=[float("nan")], t_status=1)


def test_a_spot_stage_sends_previews_only_of_the_cameras_someone_watches(tmp_path):
    """The XPUB side learns each subscription: statuses for everyone subscribed to them,
    a camera's previews only while a subscriber asks for that camera's."""
    ctx = zmq.Context.instance()
    endpoint = f"ipc://{tmp_path}/watch.ipc"
    xpub = ctx.socket(zmq.XPUB)
    xpub.bind(endpoint)
    watch = Watch(xpub)
    sub = ctx.socket(zmq.SUB)
    sub.connect(endpoint)
    spots = {name: FaceSpotter() for name in ("camA", "camB")}
    frames = _synth_frames(40)

    def play(n_frames: int) -> list[protocol.Message]:
        got = []
        for i, frame in enumerate(frames[:n_frames]):
            for name, spotter in spots.items():
                spotter.push(frame.image, i, frame.t_media or i * 33_333_333)
                watch.frame(name, spotter, frame.image, time.time_ns())
            time.sleep(0.02)
            while sub.poll(0):
                got.append(protocol.recv(sub))
        return got

    def seen(topic: bytes, wanted: bool) -> None:
        """Until the XPUB side has taken the subscription made (or dropped)."""

        def taken() -> bool:
            watch.poll(time.monotonic(), force=True)
            return (topic in watch.subscriptions) == wanted

        assert _until(taken, 5, every=0.05)

    watch.poll(time.monotonic(), force=True)
    play(10)
    assert not watch.active, "nobody subscribed: nothing is produced"
    sub.setsockopt(zmq.SUBSCRIBE, b"status:")
    seen(b"status:", True)
    got = play(20)
    assert {m.kind for m in got} == {"status"}, "statuses only: no preview was asked for"
    assert {m.stream for m in got} == {"camA", "camB"}
    assert got[-1].fields["state"] == "tracking" and len(got[-1].fields["face"]) == 4
    sub.setsockopt(zmq.SUBSCRIBE, protocol.topic("camB", "preview"))
    seen(protocol.topic("camB", "preview"), True)
    previews = [m for m in play(20) if m.kind == "preview"]
    assert previews and {m.stream for m in previews} == {"camB"}
    image = previews[-1].arrays[0]
    assert max(image.shape[:2]) <= 320 and previews[-1].fields["scale"] == 0.5
    sub.setsockopt(zmq.UNSUBSCRIBE, protocol.topic("camB", "preview"))
    seen(protocol.topic("camB", "preview"), False)
    play(5)  # what was on its way
    assert not [m for m in play(15) if m.kind == "preview"], "no one watches: no previews"
    sub.close(linger=0)
    xpub.close(linger=0)


def test_the_view_reads_fps_p99_and_reconnects_from_real_metrics():
    from prometheus_client import generate_latest

    from mfvan.deploy.web.hub import parse_metrics, quantile
    from mfvan.stream.metrics import Metrics

    m = Metrics("spot")
    for seconds in [0.002] * 98 + [0.04, 0.2]:
        m.stage_seconds.labels("spot", "door").observe(seconds)
    m.frames_in.labels("spot", "door").inc(100)
    m.reconnect_attempts.labels("door").inc(2)
    parsed = parse_metrics(generate_latest(m.registry).decode())["door"]
    assert parsed["frames"] == 100 and parsed["attempts"] == 2
    p99 = quantile(parsed["buckets"], 0.99)
    assert 0.025 < p99 <= 0.05, "the 99th of 100 lies in the bucket holding 0.04 s"
    assert quantile(parsed["buckets"], 0.5) <= 0.0025
    assert quantile({1.0: 0.0, float("inf"): 0.0}, 0.99) is None


# ----------------------------------------------------------------------------- security


def test_a_non_loopback_bind_without_a_token_is_refused(tmp_path):
    env = {"MFVAN_WEB_TOKEN": ""}
    for argv in (
        ["web", "--bind", f"0.0.0.0:{free_port()}"],
        ["run", "--source", "synth://?seconds=1", "--web", f"0.0.0.0:{free_port()}"],
    ):
        done = _mfvan(*argv, env=env, stderr=subprocess.PIPE, text=True)
        _, err = done.communicate(timeout=60)
        assert done.returncode == 2, err
        assert "refusing to serve the web view" in err and "MFVAN_WEB_TOKEN" in err
        assert "Traceback" not in err
    short = _mfvan("web", "--bind", f"127.0.0.1:{free_port()}", env={"MFVAN_WEB_TOKEN": "abc"},
                   stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert short.wait(timeout=60) == 2 and "16+" in short.stderr.read()


@pytest.fixture
def lone_view(tmp_path):
    """`mfvan web` with no pipeline behind it, and a token, on loopback."""
    port = free_port()
    secret = "s3cret-token-for-tests"
    view = _mfvan(
        "web", "--bind", f"127.0.0.1:{port}", "--db", str(tmp_path / "none.db"),
        env={"MFVAN_WEB_TOKEN": secret}, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    assert _until(lambda: port_open(port), 60), "the view came up"
    yield base, secret
    view.terminate()
    view.wait(timeout=15)


def test_with_a_token_every_request_needs_it(lone_view):
    base, secret = lone_view
    for path in ("/", "/live", "/history", "/api/events", "/metrics", "/static/app.js"):
        assert _get(base + path)[0] == 401, path
    assert _get(base + "/", {"Authorization": "Bearer wrong-token-wrong-token"})[0] == 401
    assert _get(base + "/api/events", {"Authorization": f"Bearer {secret}"})[0] == 200
    status, headers, _ = _get(base + f"/history?label=x&token={secret}")
    assert status == 303 and headers["Location"] == "/history?label=x", "the token leaves the URL"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    status, _, body = _get(base + "/history", {"Cookie": cookie.split(";")[0]})
    assert status == 200 and b"no such event store" in body, "the store's absence, said"


def test_the_token_redirect_stays_on_this_site_and_any_case_of_bearer_is_taken(lone_view):
    """`//evil.example/x?token=T` was answered `303 Location: //evil.example/x`: a
    redirect off the site after the token was checked (an open redirect); and `bearer`
    in lower case was refused (RFC 7235 makes the scheme case-insensitive)."""
    import http.client

    base, secret = lone_view
    port = int(base.rsplit(":", 1)[1])
    for path in ("//evil.example/x", "/\\evil.example/x", "///evil.example/x"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"{path}?token={secret}")
        answer = conn.getresponse()
        location = answer.getheader("Location")
        conn.close()
        assert answer.status == 303 and location.startswith("/"), location
        assert not location.startswith(("//", "/\\")), location
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert _get(base + "/api/events", {"Authorization": f"{scheme} {secret}"})[0] == 200


def test_without_a_token_only_requests_naming_a_loopback_host_are_answered():
    port = free_port()
    view = _mfvan("web", "--bind", f"127.0.0.1:{port}", env={"MFVAN_WEB_TOKEN": ""},
                  stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert _until(lambda: port_open(port), 60)
        base = f"http://127.0.0.1:{port}/api/events"
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
            assert _get(base, {"Host": host})[0] == 200, host
        for host in (f"attacker.example:{port}", "10.0.0.5", f"[fe80::1]:{port}"):
            status, _, body = _get(base, {"Host": host})
            assert status == 400 and b"not a loopback host" in body, host
    finally:
        view.terminate()
        view.wait(timeout=15)


def test_without_faces_no_preview_nor_image_is_served(lone_view):
    base, secret = lone_view
    auth = {"Authorization": f"Bearer {secret}"}
    for path in ("/cameras/cam1/preview.mjpg", "/cameras/cam1/preview.jpg", "/media/x/apex.png"):
        status, _, body = _get(base + path, auth)
        assert status == 403 and b"--faces" in body, path


# ----------------------------------------------------------------------------- a live view


def _base_port() -> int:
    """The `view` run's --metrics-base-port (its aggregate /metrics is one below)."""
    return 21000 + os.getpid() % 500 * 8


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    """`mfvan run` of two synthetic cameras with its web view (faces on), an event store
    with snapshots, for the module's tests: (base URL, runtime folder, store path)."""
    tmp = tmp_path_factory.mktemp("web")
    runtime, db = tmp / "run", tmp / "events.db"
    port = free_port()
    base_port = _base_port()
    run = _mfvan(
        "run",
        "--source", "camA=synth://?fps=30&seed=3&seconds=400",
        "--source", "camB=synth://?fps=30&seed=4&seconds=400",
        "--web", f"127.0.0.1:{port}", "--web-faces",
        "--db", str(db), "--with-crops",
        "--runtime-dir", str(runtime), "--metrics-base-port", str(base_port),
        "--seconds", "400",
        stderr=open(tmp / "run.log", "w"), env={"MFVAN_WEB_TOKEN": VIEW_TOKEN},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def tracking():
        try:
            cams = __import__("json").loads(_get(base + "/api/cameras")[2])
        except (OSError, ValueError):
            return False
        return {c["name"] for c in cams if c["state"] == "tracking"} == {"camA", "camB"}

    try:
        assert _until(tracking, 120), (tmp / "run.log").read_text()[-3000:]
        yield base, runtime, db
    finally:
        run.terminate()
        run.wait(timeout=30)


def test_the_runs_metrics_carry_the_views_and_its_ready_waits_for_it(view):
    """`mfvan run --web`: the run's one /metrics (what Prometheus scrapes) has the view's
    series, labelled with its process, and the view in mfvan_stage_up; /ready is 200 only
    once every stage and the view are ready."""
    from prometheus_client.parser import text_string_to_metric_families

    port = _base_port() - 1
    assert _get(f"http://127.0.0.1:{port}/ready")[0] == 200
    text = _get(f"http://127.0.0.1:{port}/metrics")[2].decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    up = (("process", "web-view"), ("stage", "web"))
    assert samples[("mfvan_stage_up", up)] == 1.0
    statuses = (("kind", "statuses"), ("process", "web-view"))
    assert samples[("mfvan_web_received", statuses)] > 0, "the view heard the spot stages"
    assert ("mfvan_web_browsers", (("process", "web-view"),)) in samples


def test_a_stalled_browser_does_not_hold_back_events(view):
    """Browsers that open the previews and the live feed and never read: the view's sends
    to them block, the spot stages' never do; a plain subscriber gets the events on time
    and the view still answers others."""
    base, runtime, _ = view
    stalled = []
    for path in ("/cameras/camA/preview.mjpg", "/cameras/camB/preview.mjpg", "/live") * 3:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        auth = f"Authorization: Bearer {VIEW_TOKEN}"
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n\r\n".encode())
        stalled.append(s)  # and never read
    try:
        lags = []
        deadline = time.monotonic() + 25
        with subscribe(f"ipc://{runtime}/events.ipc", timeout_s=1.0) as sub:
            while time.monotonic() < deadline:
                for event in sub:
                    now = time.time_ns()
                    lags.append((now - event.times["t_recognize"]) / 1e9)
                    break
        assert len(lags) >= 3, "events kept coming"
        # what the view could hold back: from the recognizer's send to the subscriber (the
        # pipeline's own latency before it grows with the box's load, and is not the
        # view's: a loaded box once took 4.4 s from capture)
        assert max(lags) < 0.5, f"published to received: {max(lags):.3f} s"
        status, _, body = _get(base + "/api/cameras", timeout=3)
        assert status == 200 and b"camA" in body, "the view answers the others meanwhile"
    finally:
        for s in stalled:
            s.close()


# ----------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager downloads nothing
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _screenshot(driver, name: str, tmp_path) -> None:
    """The page as PNG: into docs/images/ with MFVAN_SCREENSHOTS=1 (the README's), else
    beside the test."""
    folder = REPO / "docs" / "images" if os.environ.get("MFVAN_SCREENSHOTS") else tmp_path
    assert driver.save_screenshot(str(folder / f"web-{name}.png"))


def _loaded(driver, img) -> bool:
    return driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)


@pytest.mark.browser
def test_a_camera_tile_shows_frames_and_the_spotters_signal(view, browser, tmp_path):
    from selenium.webdriver.common.by import By

    base, _, _ = view
    browser.get(base + f"/?token={VIEW_TOKEN}")
    tiles = {
        t.get_attribute("data-camera"): t for t in browser.find_elements(By.CSS_SELECTOR, ".tile")
    }
    assert set(tiles) == {"camA", "camB"}
    preview = tiles["camA"].find_element(By.CSS_SELECTOR, "img.preview")
    assert _until(lambda: _loaded(browser, preview), 15), "the preview shows a frame"
    width = browser.execute_script("return arguments[0].naturalWidth", preview)
    assert width == 320, "a 640 x 480 camera, downscaled"
    previews = lambda: __import__("json").loads(_get(base + "/healthz")[2])["counts"]["previews"]  # noqa: E731
    before = previews()
    assert _until(lambda: previews() > before + 5, 10), "frames keep coming while it is open"
    state = tiles["camA"].find_element(By.CSS_SELECTOR, ".state")
    assert _until(lambda: state.text == "tracking", 10)
    drawn = "return arguments[0].getContext('2d').getImageData(0, 0, 320, 60).data.some(v => v)"
    canvas = tiles["camA"].find_element(By.CSS_SELECTOR, "canvas.signal")
    assert _until(lambda: browser.execute_script(drawn, canvas), 10), "the signal is drawn"
    fps = tiles["camA"].find_element(By.CSS_SELECTOR, ".fps")
    assert _until(lambda: fps.text.isdigit() and 20 <= int(fps.text) <= 40, 20), fps.text
    p99 = tiles["camA"].find_element(By.CSS_SELECTOR, ".p99")
    assert _until(lambda: p99.text.endswith(" ms"), 20), "p99 from the run's metrics"
    _screenshot(browser, "cameras", tmp_path)


@pytest.mark.browser
def test_an_event_appears_on_the_page_within_2_s_with_its_images(view, browser, tmp_path):
    from selenium.webdriver.common.by import By

    base, runtime, _ = view
    browser.get(base + f"/?token={VIEW_TOKEN}")
    time.sleep(1.0)  # the live feed is open
    with subscribe(f"ipc://{runtime}/events.ipc", timeout_s=60) as sub:
        event = next(iter(sub), None)  # the next event the pipeline publishes
        received = time.monotonic()
    assert event is not None, "an event within 60 s"
    selector = f'#events .event[data-id="{event.id}"]'
    card = _until(lambda: browser.find_elements(By.CSS_SELECTOR, selector), 5, every=0.02)
    shown = time.monotonic() - received
    assert card, "the event is on the page"
    assert shown < 2.0, f"{shown:.2f} s after a plain subscriber had it"
    text = card[0].text
    assert event.label in text.lower() and event.stream in text  # the label: capitalised
    assert f"{event.confidence:.2f}" in text
    assert "apex → event" in text
    images = card[0].find_elements(By.CSS_SELECTOR, "img.snap")
    assert [i.get_attribute("alt") for i in images] == ["onset", "apex", "difference"]
    assert all(_until(lambda i=i: _loaded(browser, i), 5) for i in images), "the images load"
    _screenshot(browser, "cameras", tmp_path)


@pytest.mark.browser
def test_the_history_filter_narrows_the_list_and_an_event_opens(view, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from mfvan.stream.outputs.store import EventStore

    base, _, db = view

    def both_cameras():
        with EventStore(db, readonly=True) as store:
            return {e["stream"] for e in store.query()} == {"camA", "camB"}

    assert _until(both_cameras, 90), "both cameras have events in the store"
    browser.get(base + f"/history?token={VIEW_TOKEN}")
    rows = browser.find_elements(By.CSS_SELECTOR, "#history tr.row")
    streams = {r.get_attribute("data-stream") for r in rows}
    assert streams == {"camA", "camB"}
    _screenshot(browser, "history", tmp_path)
    Select(browser.find_element(By.NAME, "stream")).select_by_visible_text("camB")
    browser.find_element(By.CSS_SELECTOR, "#filter button").click()
    _until(lambda: "stream=camB" in browser.current_url, 5)
    narrowed = browser.find_elements(By.CSS_SELECTOR, "#history tr.row")
    assert 0 < len(narrowed) < len(rows) + 5
    assert {r.get_attribute("data-stream") for r in narrowed} == {"camB"}
    assert int(browser.find_element(By.ID, "count").text) == len(narrowed)
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#history img.thumb")
    assert thumbs and _until(lambda: _loaded(browser, thumbs[0]), 5), "snapshots from the store"
    narrowed[0].find_element(By.LINK_TEXT, "open").click()
    images = _until(lambda: browser.find_elements(By.CSS_SELECTOR, ".images.large img"), 5)
    assert images and all(_until(lambda i=i: _loaded(browser, i), 5) for i in images)
    assert "camB" in browser.find_element(By.TAG_NAME, "h1").text
    _screenshot(browser, "event", tmp_path)


def test_docs_screenshots_exist_for_the_readme():
    for name in ("cameras", "history"):
        path = REPO / "docs" / "images" / f"web-{name}.png"
        hint = "MFVAN_SCREENSHOTS=1 pytest -m browser tests/deploy/test_web.py"
        assert path.is_file(), f"{path} ({hint})"
    assert "docs/images/web-cameras.png" in (REPO / "README.md").read_text()


def test_a_snapshot_that_is_a_symbolic_link_is_not_served(tmp_path):
    """A snapshot replaced by a link (to /etc/passwd, say) is not served: only regular
    files inside the store's media folder are (before: the view served what it pointed
    at)."""
    import time as _time

    import numpy as np

    from mfvan.deploy.web.hub import Hub
    from mfvan.stream.client import Event
    from mfvan.stream.messages import uuid7
    from mfvan.stream.outputs.store import EventStore

    t_ns = _time.time_ns()
    crop = np.full((64, 64), 100, np.uint8)
    event = Event(stream="door", seq=0, label="x", probs={"x": 1.0}, confidence=1.0,
                  onset=1, apex=2, offset=3, model="m", t_onset=t_ns, t_apex=t_ns,
                  t_offset=t_ns, onset_crop=crop, apex_crop=crop, id=uuid7(t_ns))  # fmt: skip
    with EventStore(tmp_path / "e.db") as store:
        store.add([event])
    hub = Hub(db=tmp_path / "e.db", faces=True)
    apex = hub.stored_file(event.id, "apex.png")
    assert apex is not None and apex.read_bytes().startswith(b"\x89PNG")
    apex.unlink()
    apex.symlink_to("/etc/passwd")
    assert hub.stored_file(event.id, "apex.png") is None
    assert hub.image(event.id, "apex") is None
    day = apex.parent.parent
    moved = tmp_path / "elsewhere"
    day.rename(moved)
    day.symlink_to(moved)  # a linked folder on the way: not served either
    assert hub.stored_file(event.id, "onset.png") is None


def test_a_view_stopped_with_browsers_connected_says_nothing_more(tmp_path):
    """Three live feeds open when the view is told to stop: each ends at once, so uvicorn
    cancels none (before: `Cancel 3 running task(s)` and their CancelledError tracebacks,
    some 140 lines)."""
    port = free_port()
    view = _mfvan("web", "--bind", f"127.0.0.1:{port}", "--db", str(tmp_path / "none.db"),
                  stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert _until(lambda: port_open(port), 60), "the view came up"
        feeds = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            feeds.append(s)
        for s in feeds:
            s.settimeout(10)
            assert s.recv(100).startswith(b"HTTP/1.1 200"), "the feed is open"
        view.terminate()
        _, err = view.communicate(timeout=30)
    finally:
        if view.poll() is None:
            view.kill()
    assert "Cancel" not in err and "Traceback" not in err and "Error" not in err, err


@pytest.mark.slow
def test_half_open_requests_are_closed_and_the_view_answers_on(lone_view):
    """Slowloris: 100 connections that never finish their headers. Each is closed once
    `HEADER_TIMEOUT_S` has passed (before: held until the process ran out of file
    descriptors, before the token check), and the view answers throughout."""
    from mfvan.deploy.commands.web import HEADER_TIMEOUT_S

    base, secret = lone_view
    port = int(base.rsplit(":", 1)[1])
    hogs = []
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never ends
        hogs.append(s)
    assert _get(base + "/api/events", {"Authorization": f"Bearer {secret}"})[0] == 200
    time.sleep(HEADER_TIMEOUT_S + 2)
    closed = 0
    for s in hogs:
        s.settimeout(2)
        try:
            closed += s.recv(100) == b""
        except (ConnectionResetError, TimeoutError):
            closed += isinstance(sys.exc_info()[1], ConnectionResetError)
        s.close()
    assert closed == 100, closed
    assert _get(base + "/api/events", {"Authorization": f"Bearer {secret}"})[0] == 200


def test_faces_on_loopback_need_a_token_one_is_made_and_its_address_logged(tmp_path):
    """With faces on, another user of the machine could open the view on loopback and see
    every face (before: yes). Without a token given, the view makes one and logs the
    address to open; without it every request is refused."""
    port = free_port()
    view = _mfvan("web", "--bind", f"127.0.0.1:{port}", "--faces", "--db", str(tmp_path / "x.db"),
                  stderr=subprocess.PIPE, text=True, env={"MFVAN_WEB_TOKEN": ""})  # fmt: skip
    try:
        assert _until(lambda: port_open(port), 60), "the view came up"
        assert _get(f"http://127.0.0.1:{port}/api/events", {})[0] == 401
    finally:
        view.terminate()
        _, err = view.communicate(timeout=30)
    (line,) = [x for x in err.splitlines() if f"127.0.0.1:{port}/?token=" in x]
    made = line.split("?token=")[1].split()[0]
    assert len(made) >= 24 and "made for this run" in line
