"""Events to an MQTT broker (paho-mqtt), in the spirit of Frigate's event messages, for
Home Assistant, Node-RED and the like.

    out = MqttOutput(MqttConfig("127.0.0.1", 1883, prefix="mfvan"))
    out.send(event)          # never blocks: dropped and counted while the broker is away

Topics: every event as JSON on `PREFIX/events` and on `PREFIX/CAMERA/events`; the event
is `Event.as_dict()` plus `"type": "new"` (an event is whole when it is published, so
there are no `update` or `end` messages), without pixels. `PREFIX/available` says
`online` (retained) once connected and `offline` when the client stops or, as its MQTT
last will, when it vanishes. QoS and retain are the operator's (`qos`, `retain`).

The connection is paho's network thread's: connecting and reconnecting (backoff from
`min_delay_s` doubling to `max_delay_s`) never hold the caller. While the broker is away
an event is dropped and counted (`dropped`), not queued: what was missed is in the event
store, and a burst of stale events after a broker restart helps no one. Once connected,
at most `queue` messages wait for the socket (paho's own queue, bounded); beyond that
they are dropped and counted too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from dataclasses import dataclass

from . import NO_COUNTERS, Counters, OutputKind

log = logging.getLogger("mfvan.outputs")


@dataclass(frozen=True)
class MqttConfig:
    """Where and how: the broker, the topics' prefix, QoS and retain; credentials; the
    client's queue of unsent messages; the reconnection delays."""

    host: str
    port: int = 1883
    prefix: str = "mfvan"
    qos: int = 0
    retain: bool = False
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    queue: int = 1000
    min_delay_s: float = 1.0
    max_delay_s: float = 30.0


class MqttOutput:
    name = "mqtt"

    def __init__(self, config: MqttConfig, counters: Counters = NO_COUNTERS):
        import paho.mqtt.client as mqtt

        if config.qos not in (0, 1, 2):
            raise ValueError(f"MQTT QoS is 0, 1 or 2, not {config.qos!r}")
        self.prefix, self.qos, self.retain = config.prefix.rstrip("/"), config.qos, config.retain
        self.dropped = self.sent = 0
        self.on_drop, self.on_sent = counters.on_drop, counters.on_sent
        self.connected = threading.Event()
        client_id = config.client_id or ""
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if config.username:
            self.client.username_pw_set(config.username, config.password)
        self.client.max_queued_messages_set(config.queue)
        delays = {"min_delay": int(config.min_delay_s), "max_delay": int(config.max_delay_s)}
        self.client.reconnect_delay_set(**delays)
        self.client.will_set(f"{self.prefix}/available", "offline", qos=1, retain=True)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_connect_fail = self._unreachable
        self._told_unreachable = False
        self.where = f"{config.host}:{config.port}"
        self.client.connect_async(config.host, config.port, keepalive=30)
        self.client.loop_start()

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("mqtt: %s refused the connection: %s", self.where, reason_code)
            return
        self.connected.set()
        self._told_unreachable = False
        client.publish(f"{self.prefix}/available", "online", qos=1, retain=True)
        log.info("mqtt: connected to %s", self.where)

    def _unreachable(self, client, userdata) -> None:
        """A connection attempt failed (no broker there, refused, unresolvable): said once
        until it connects (before: never said; events dropped as `disconnected`)."""
        if not self._told_unreachable:
            self._told_unreachable = True
            log.warning("mqtt: cannot reach %s; events are dropped until it answers", self.where)

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set():
            log.warning("mqtt: lost %s (%s); reconnecting", self.where, reason_code)
        self.connected.clear()

    def send(self, event) -> bool:
        """Publish one event (a `mfvan.stream.Event`); False when it was dropped."""
        import paho.mqtt.client as mqtt_errors

        if not self.connected.is_set():
            return self._drop("disconnected")
        payload = json.dumps({"type": "new", **event.as_dict()})
        for topic in (f"{self.prefix}/events", f"{self.prefix}/{event.stream}/events"):
            info = self.client.publish(topic, payload, qos=self.qos, retain=self.retain)
            if info.rc != 0:  # MQTT_ERR_NO_CONN, MQTT_ERR_QUEUE_SIZE: not sent
                full = info.rc == mqtt_errors.MQTT_ERR_QUEUE_SIZE
                return self._drop("queue" if full else "disconnected")
        self.sent += 1
        self.on_sent()
        return True

    def _drop(self, reason: str) -> bool:
        self.dropped += 1
        self.on_drop(reason)
        return False

    def close(self) -> None:
        if self.connected.is_set():
            self.client.publish(f"{self.prefix}/available", "offline", qos=1, retain=True)
        self.client.disconnect()
        self.client.loop_stop()


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mqtt",
        metavar="HOST[:PORT]",
        help="publish events to this MQTT broker (port 1883 unless given); user and password "
        "from MFVAN_MQTT_USER and MFVAN_MQTT_PASSWORD",
    )
    p.add_argument(
        "--mqtt-prefix", default="mfvan", help="topics PREFIX/events, PREFIX/CAMERA/events"
    )
    p.add_argument("--mqtt-qos", type=int, choices=(0, 1, 2), default=0, help="MQTT QoS")
    p.add_argument("--mqtt-retain", action="store_true", help="publish events retained")


def _build(args: argparse.Namespace, counters: Counters) -> MqttOutput:
    host, _, port = args.mqtt.rpartition(":") if ":" in args.mqtt else (args.mqtt, "", "")
    try:
        port = int(port or 1883)
    except ValueError:
        raise ValueError(f"--mqtt {args.mqtt}: the port is not a number") from None
    config = MqttConfig(
        host,
        port,
        prefix=args.mqtt_prefix,
        qos=args.mqtt_qos,
        retain=args.mqtt_retain,
        username=os.environ.get("MFVAN_MQTT_USER"),
        password=os.environ.get("MFVAN_MQTT_PASSWORD"),
    )
    return MqttOutput(config, counters)


KIND = OutputKind("mqtt", _add_options, lambda args: bool(args.mqtt), _build)
