"""Several hosts, really: the pipeline split over network namespaces that this test makes
(Linux, as root; skipped elsewhere with the reason).

Five hosts on one switch, each a namespace joined to a bridge in a sixth (the switch) by
a veth pair: `ingest` (10.150.0.1), `spot` (10.150.0.2, the spot stage and the first
recognizer), `sub` (10.150.0.3, an authorized subscriber), `spare` (10.150.0.4, where the
recognizer moves) and `stranger` (10.150.0.5, keys nobody authorized). Every endpoint is
tcp:// with CURVE. The recognizer publishes on a service address, 10.150.0.10, that
moves with it. Each stage serves its metrics on 127.0.0.1 inside its own namespace; the
test reads them from there.

Scenarios, in order, on one running pipeline: events reach the subscriber over three
hops and the stranger gets nothing (counted); a 5 s partition of the camera's host loses
only the outage's frames and frames resume within 2 s, with no restart; the recognizer
moves to another host at the same address and pairs reach it; two recognizers on two
hosts share one spot stage's pairs and each event arrives once.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mfvan.stream.security import make_keys

pytestmark = [pytest.mark.netns, pytest.mark.slow]

HOSTS = {"ingest": 1, "spot": 2, "sub": 3, "spare": 4, "stranger": 5}
VIP = "10.150.0.10"  # the recognizer's service address
MFVAN = [sys.executable, "-m", "mfvan.deploy.cli"]


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "making network namespaces needs root (CI runs as root)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"mfvp{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def ip(*argv):
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


class Net:
    """The namespaces and links; `ns(host)` is a host's namespace name."""

    def __init__(self):
        tag = f"{os.getpid() % 10000}"
        self.switch = f"mfv{tag}sw"
        self.names = {h: f"mfv{tag}{h[:4]}" for h in HOSTS}
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for host, n in HOSTS.items():
            ns = self.names[host]
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("link", "add", f"mfv{tag}h{n}", "type", "veth", "peer", "name", f"mfv{tag}s{n}")
            ip("link", "set", f"mfv{tag}h{n}", "netns", ns)
            ip("link", "set", f"mfv{tag}s{n}", "netns", self.switch)
            ip("-n", ns, "link", "set", f"mfv{tag}h{n}", "name", "eth0")
            ip("-n", ns, "addr", "add", f"10.150.0.{n}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", self.switch, "link", "set", f"mfv{tag}s{n}", "master", "br0")
            ip("-n", self.switch, "link", "set", f"mfv{tag}s{n}", "up")
        self.tag = tag

    def ns(self, host: str) -> str:
        return self.names[host]

    def link(self, host: str, up: bool) -> None:
        """The host's cable to the switch, plugged in or pulled out."""
        port = f"mfv{self.tag}s{HOSTS[host]}"
        ip("-n", self.switch, "link", "set", port, "up" if up else "down")

    def move_address(self, address: str, src: str, dst: str) -> None:
        """A service address moves host; the other hosts forget where it was (as a
        gratuitous ARP from the new host would tell them)."""
        ip("-n", self.ns(src), "addr", "del", f"{address}/24", "dev", "eth0")
        ip("-n", self.ns(dst), "addr", "add", f"{address}/24", "dev", "eth0")
        for host in HOSTS:
            subprocess.run(["ip", "-n", self.ns(host), "neigh", "flush", "all"], check=False)

    def close(self) -> None:
        for ns in [*self.names.values(), self.switch]:
            subprocess.run(["ip", "netns", "del", ns], check=False)


class Host:
    """Processes run on one host (in its namespace)."""

    def __init__(self, net: Net, host: str):
        self.net, self.host = net, host

    def mfvan(self, *argv, **kw) -> subprocess.Popen:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.net.ns(self.host), *MFVAN, *argv], **kw
        )

    def metric(self, port: int, name: str, **labels) -> float:
        """A metric's value summed over the series that have `labels`, read on the host."""
        code = (
            "import sys, urllib.request; "
            "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
        )
        out = subprocess.run(
            ["ip", "netns", "exec", self.net.ns(self.host), sys.executable, "-c", code,
             f"http://127.0.0.1:{port}/metrics"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if out.returncode != 0:
            return float("nan")
        total = 0.0
        for family in text_string_to_metric_families(out.stdout):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total


class Watch:
    """A metric read every 50 ms on a host by a process living there: (monotonic time,
    value) pairs, on the clock the test shares with it, for timing what happens after a
    moment the test marks (starting a process per read would take longer than that)."""

    CODE = """
import sys, time, urllib.request
url, name, want = sys.argv[1], sys.argv[2], sys.argv[3]
while True:
    try:
        text = urllib.request.urlopen(url, timeout=1).read().decode()
        value = sum(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith(name + "{") and want in line)
        print(time.monotonic(), value, flush=True)
    except OSError:
        pass
    time.sleep(0.05)
"""

    def __init__(self, host: "Host", port: int, name: str, label: str):
        self.samples: list[tuple[float, float]] = []
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", host.net.ns(host.host), sys.executable, "-c", self.CODE,
             f"http://127.0.0.1:{port}/metrics", name, label],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            t, value = line.split()
            self.samples.append((float(t), float(value)))

    def first_rise(self, after: float, above: float) -> float | None:
        """When the value first exceeded `above` after the moment `after`."""
        return next((t for t, v in self.samples if t > after and v > above), None)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Subscriber:
    """`mfvan subscribe --json` on a host; events kept with when they came."""

    def __init__(self, host: Host, endpoints: list[str], keys):
        self.events: list[tuple[float, dict]] = []
        self.procs = []
        for endpoint in endpoints:
            proc = host.mfvan(
                "subscribe", endpoint, "--keys", str(keys), "--json",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()
            self.procs.append(proc)

    def _read(self, proc):
        for line in proc.stdout:
            self.events.append((time.monotonic(), json.loads(line)))

    def wait(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.events) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        return len(self.events) >= n

    def stop(self):
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)


def _until(check, timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = _why_not()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("netns")
    keys, stranger_keys = make_keys(tmp / "keys"), make_keys(tmp / "stranger")
    net = Net()
    procs = {}
    try:
        ingest, spot = Host(net, "ingest"), Host(net, "spot")
        ip("-n", net.ns("spot"), "addr", "add", f"{VIP}/24", "dev", "eth0")
        k = ["--keys", str(keys)]
        procs["ingest"] = ingest.mfvan(
            "ingest", "--source", "synth://?fps=50&seed=5", "--stream", "cam1",
            "--out", "tcp://10.150.0.1:5550", "--metrics-port", "9101", *k,
        )  # fmt: skip
        procs["spot"] = spot.mfvan(
            "spot", "--in", "tcp://10.150.0.1:5550", "--out", "tcp://10.150.0.2:5551",
            "--metrics-port", "9102", *k,
        )  # fmt: skip
        procs["recognize"] = spot.mfvan(
            "recognize", "--in", "tcp://10.150.0.2:5551", "--out", f"tcp://{VIP}:5560",
            "--backend", "onnxruntime", "--metrics-port", "9103", *k,
        )  # fmt: skip
        yield {"net": net, "keys": keys, "stranger": stranger_keys, "procs": procs}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        net.close()


def test_over_three_hosts_with_curve_events_arrive_and_a_stranger_gets_nothing(cluster):
    net, keys = cluster["net"], cluster["keys"]
    sub = Subscriber(Host(net, "sub"), [f"tcp://{VIP}:5560"], keys)
    stranger = Host(net, "stranger").mfvan(
        "subscribe", f"tcp://{VIP}:5560", "--keys", str(cluster["stranger"]), "--timeout", "60",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sub.wait(2, timeout=240), "events over ingest -> spot -> recognize -> subscriber"
        out, err = stranger.communicate(timeout=90)
        assert stranger.returncode == 2 and "refused this subscriber's CURVE key" in err, err
        assert out == "", "the stranger received no event"
        spot = Host(net, "spot")
        assert spot.metric(9103, "mfvan_frames_dropped_total", reason="unauthorized") >= 1
        # a stranger's stage cannot pull frames from ingest either
        thief = Host(net, "stranger").mfvan(
            "spot", "--in", "tcp://10.150.0.1:5550", "--out", "tcp://10.150.0.5:5551",
            "--metrics-port", "9102", "--keys", str(cluster["stranger"]),
        )  # fmt: skip
        try:
            ingest = Host(net, "ingest")
            refused = lambda: ingest.metric(  # noqa: E731
                9101, "mfvan_frames_dropped_total", reason="unauthorized"
            )
            assert _until(lambda: refused() >= 1, 60, every=1.0), (
                "ingest refuses the thief's handshakes"
            )
            time.sleep(2)  # and keeps refusing them: the thief never gets a frame
            assert Host(net, "stranger").metric(9102, "mfvan_frames_in_total") == 0
        finally:
            thief.send_signal(signal.SIGTERM)
            thief.wait(timeout=10)
    finally:
        sub.stop()


def test_a_5_s_partition_loses_only_its_frames_and_frames_resume_within_2_s(cluster):
    net, procs = cluster["net"], cluster["procs"]
    ingest, spot = Host(net, "ingest"), Host(net, "spot")
    sub = Subscriber(Host(net, "sub"), [f"tcp://{VIP}:5560"], cluster["keys"])
    pids = {name: p.pid for name, p in procs.items()}
    watch = Watch(spot, 9102, "mfvan_frames_in_total", 'stream="cam1"')
    try:
        assert _until(lambda: bool(watch.samples) and watch.samples[-1][1] > 0, 30)
        net.link("ingest", up=False)
        time.sleep(5.0)
        during = watch.samples[-1][1]
        net.link("ingest", up=True)
        up = time.monotonic()
        assert _until(lambda: watch.first_rise(up, during + 10) is not None, 15)
        resumed = watch.first_rise(up, during) - up
        time.sleep(3.0)
        sent = ingest.metric(9101, "mfvan_frames_in_total", stream="cam1")
        got = spot.metric(9102, "mfvan_frames_in_total", stream="cam1")
        dropped = ingest.metric(9101, "mfvan_frames_dropped_total", reason="hwm")
        lost = sent - got
        print(f"partition: frames resumed {resumed:.2f} s after the link; {lost:.0f} lost "
              f"of {sent:.0f} ({dropped:.0f} counted as dropped at ingest)")  # fmt: skip
        assert resumed < 2.0, f"frames {resumed:.1f} s after the link came back"
        # what the pipeline counts is allowed (ingest's drops while the link is down, or
        # while a busy spot stage lags: a loaded box lost 1,091 frames, nearly all of them
        # counted); uncounted are only the frames queued in the dropped connection and in
        # flight when sampled: the two sockets' queues (64 each) and a second at 50 fps
        assert lost - dropped <= 2 * 64 + 50, "only the dropped connection's frames uncounted"
        assert all(p.poll() is None for p in procs.values()), "no stage died"
        assert {n: p.pid for n, p in procs.items()} == pids, "no restarts"
        n = len(sub.events)
        assert sub.wait(n + 1, timeout=120), "events go on after the partition"
    finally:
        watch.stop()
        sub.stop()


def test_the_recognizer_moves_host_at_the_same_address_and_pairs_reach_it(cluster):
    net, procs, keys = cluster["net"], cluster["procs"], cluster["keys"]
    sub = Subscriber(Host(net, "sub"), [f"tcp://{VIP}:5560"], keys)
    try:
        procs["recognize"].send_signal(signal.SIGKILL)
        procs["recognize"].wait()
        net.move_address(VIP, "spot", "spare")
        procs["recognize"] = Host(net, "spare").mfvan(
            "recognize", "--in", "tcp://10.150.0.2:5551", "--out", f"tcp://{VIP}:5560",
            "--backend", "onnxruntime", "--metrics-port", "9103", "--keys", str(keys),
        )  # fmt: skip
        assert sub.wait(1, timeout=240), "the same subscriber, the same address, a new host"
        assert Host(net, "spare").metric(9103, "mfvan_events_total") >= 1
    finally:
        sub.stop()


def test_two_recognizers_on_two_hosts_share_the_pairs_and_each_event_arrives_once(cluster):
    net, procs, keys = cluster["net"], cluster["procs"], cluster["keys"]
    procs["recognize2"] = Host(net, "spot").mfvan(
        "recognize", "--in", "tcp://10.150.0.2:5551", "--out", "tcp://10.150.0.2:5561",
        "--backend", "onnxruntime", "--metrics-port", "9104", "--keys", str(keys),
    )  # fmt: skip
    spot, spare = Host(net, "spot"), Host(net, "spare")
    assert _until(lambda: spot.metric(9104, "mfvan_frames_in_total") >= 0, 240, every=1.0)
    sub = Subscriber(Host(net, "sub"), [f"tcp://{VIP}:5560", "tcp://10.150.0.2:5561"], keys)
    try:
        assert _until(
            lambda: (
                spot.metric(9104, "mfvan_events_total") >= 2
                and spare.metric(9103, "mfvan_events_total") >= 2
            ),
            300,
            every=2.0,
        ), "both recognizers classify"
        time.sleep(2.0)
        apexes = [e["apex"] for _, e in sub.events]
        models = {e["model"] for _, e in sub.events}
        assert len(apexes) >= 2 and len(apexes) == len(set(apexes)), "each event once"
        assert len(models) == 1
    finally:
        sub.stop()
