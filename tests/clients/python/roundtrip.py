#!/usr/bin/env python3
"""paho-mqtt 2.x round trip for brokk's end-to-end tests (tests/e2e/outside_clients.rs).

    python3 tests/clients/python/roundtrip.py HOST PORT VERSION TOPIC

VERSION is 3.1.1 or 5. A subscriber connects and subscribes to TOPIC at QoS 1; once the
SUBACK is in, a second client publishes a message to TOPIC at QoS 1. Exits 0 when the
subscriber receives it, 1 on a refused connection or subscription, an error or after
10 seconds.
"""

import os
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TIMEOUT = 10.0


def main() -> int:
    if len(sys.argv) != 5 or sys.argv[3] not in ("3.1.1", "5"):
        print(__doc__, file=sys.stderr)
        return 2
    host, port, version, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
    payload = f"paho v{version} round trip".encode()
    received = threading.Event()
    problems = []

    def client(name, when_connected=None):
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"paho-{version}-{name}-{os.getpid()}",
            protocol=protocol,
        )

        def on_connect(c, userdata, flags, reason_code, properties):
            if reason_code.is_failure:
                problems.append(f"{name}: CONNACK {reason_code}")
                received.set()
            elif when_connected:
                when_connected(c)

        c.on_connect = on_connect
        return c

    publisher = client("pub")
    subscriber = client("sub", lambda c: c.subscribe(topic, qos=1))

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            problems.append(f"SUBACK {[str(rc) for rc in reason_codes]}")
            received.set()
            return
        publisher.publish(topic, payload, qos=1)

    def on_message(c, userdata, message):
        if message.topic != topic or message.payload != payload:
            problems.append(f"unexpected message on {message.topic}: {message.payload!r}")
        received.set()

    subscriber.on_subscribe = on_subscribe
    subscriber.on_message = on_message

    for c in (publisher, subscriber):
        c.connect(host, port, keepalive=30)
        c.loop_start()
    ok = received.wait(TIMEOUT)
    for c in (subscriber, publisher):
        c.disconnect()
        c.loop_stop()
    if not ok:
        problems.append("timed out waiting for the message")
    if problems:
        print(f"roundtrip.py (MQTT {version}): " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"received {payload.decode()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
