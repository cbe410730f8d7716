"""What the fleet samples share: the command line, and connecting one client with
its certificate over TLS (paho-mqtt 2.x, MQTT 5).

Each client's certificate and key are CERTS/NAME.pem and CERTS/NAME.key, as
make-certs.sh writes them, and it trusts CERTS/fleet-ca.pem for the broker's
certificate. The client id (Event Grid's session name) is the authentication name,
which the broker takes from the certificate's subject CN: no username, no password.
"""

import argparse
import os
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HERE = os.path.dirname(os.path.abspath(__file__))

# Exit statuses of the samples.
OK = 0
FAILED = 1  # timeout, mismatch, refused subscription
REFUSED = 2  # the broker refused the connection (TLS handshake or CONNACK)


def arguments(description, roles=None):
    """The options every sample takes; `roles`, the choices of --role, if any."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1", help="broker address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8883, help="broker MQTT-over-TLS port (default 8883)")
    parser.add_argument(
        "--certs",
        default=os.path.join(HERE, "certs"),
        help="directory make-certs.sh wrote (default: certs/ next to this script)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="give up after this many seconds (default 10)"
    )
    if roles:
        parser.add_argument(
            "--role",
            choices=roles,
            default=roles[0],
            help=f"which side to run (default {roles[0]}: all of them, in one process)",
        )
    return parser


def say(who, text):
    """One line of output, prefixed by who says it; flushed, as threads interleave."""
    print(f"[{who}] {text}", flush=True)


class Refused(Exception):
    """The broker would not let the client in."""


class Client:
    """One connected MQTT 5 client: `connect` returns once the CONNACK accepted it."""

    def __init__(self, args, name, client_id=None):
        self.args = args
        self.name = name
        self.client_id = client_id or name
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.connack = None
        self.lost = None
        self.last_error = None
        for ext in ("pem", "key"):
            path = os.path.join(args.certs, f"{name}.{ext}")
            if not os.path.isfile(path):
                say(name, f"{path} is missing: run make-certs.sh {args.certs} first")
                sys.exit(FAILED)
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
        )
        c.tls_set(
            ca_certs=os.path.join(args.certs, "fleet-ca.pem"),
            certfile=os.path.join(args.certs, f"{name}.pem"),
            keyfile=os.path.join(args.certs, f"{name}.key"),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        # A refused client should fail, not try again and again.
        c.reconnect_delay_set(min_delay=60, max_delay=60)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_log = self._on_log
        self.mqtt = c

    def _on_log(self, client, userdata, level, buf):
        # paho reports socket and TLS errors (e.g. the broker's TLS alert) here.
        if level == mqtt.MQTT_LOG_ERR:
            self.last_error = buf

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        if reason_code.is_failure:
            self.closed.set()
        else:
            self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.lost = reason_code
        self.closed.set()

    def connect(self):
        """Connects (clean start, no session kept) and waits for the CONNACK; raises
        Refused when the TLS handshake or the CONNACK says no."""
        a = self.args
        say(self.name, f"connecting to mqtts://{a.host}:{a.port} as client id {self.client_id!r} with {self.name}.pem")
        try:
            self.mqtt.connect(a.host, a.port, keepalive=30, clean_start=True)
        except (ssl.SSLError, OSError) as e:
            # With TLS 1.2 a refused certificate fails the handshake here.
            raise Refused(f"TLS handshake failed: {e}") from e
        self.mqtt.loop_start()
        deadline = time.monotonic() + a.timeout
        while not self.connected.is_set():
            if self.closed.wait(0.05):
                if self.connack is not None and self.connack.is_failure:
                    raise Refused(f"CONNACK {self.connack} (0x{self.connack.value:02X})")
                # With TLS 1.3 the client's handshake ends before the broker has
                # checked its certificate: the broker's alert closes the connection.
                why = f": {self.last_error}" if self.last_error else ""
                raise Refused(f"the broker closed the connection before CONNACK{why}")
            if time.monotonic() > deadline:
                raise Refused(f"no CONNACK within {a.timeout} s")
        say(self.name, "connected (CONNACK Success)")
        return self

    def subscribe(self, topic, qos=1):
        """Subscribes and waits for the SUBACK; returns False if it was refused."""
        done = threading.Event()
        codes = []

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            codes.extend(reason_codes)
            done.set()

        self.mqtt.on_subscribe = on_subscribe
        self.mqtt.subscribe(topic, qos=qos)
        if not done.wait(self.args.timeout) or any(rc.is_failure for rc in codes):
            say(self.name, f"subscription to {topic} refused or unanswered: {[str(c) for c in codes]}")
            return False
        say(self.name, f"subscribed to {topic}")
        return True

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        """Publishes and, for QoS 1, waits for the PUBACK; returns False on a refusal
        or timeout."""
        info = self.mqtt.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        try:
            info.wait_for_publish(self.args.timeout)
        except (RuntimeError, ValueError) as e:
            say(self.name, f"publish to {topic} failed: {e}")
            return False
        if not info.is_published():
            say(self.name, f"no PUBACK for the publish to {topic} within {self.args.timeout} s")
            return False
        return True

    def close(self):
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def connect_or_exit(args, name, client_id=None):
    """A connected Client, or the program ends with REFUSED saying why."""
    try:
        return Client(args, name, client_id).connect()
    except Refused as e:
        say(name, f"connection refused: {e}")
        sys.exit(REFUSED)
