#!/usr/bin/env python3
"""Broadcast: the service sends one alert, every device receives it.

The service (service-1) publishes an alert to fleet/alerts at QoS 1 as a *retained*
message with a Message Expiry Interval (--expiry, default 600 s): the broker keeps
the latest alert for that long and hands it to every device that subscribes, so a
device that is offline or rebooting when the alert goes out still learns of it when
it comes back, and a stale alert disappears on its own. The devices (device-1 and
device-2) subscribe to fleet/alerts and print what they receive.

In one process (the default) the service publishes first and the devices connect
afterwards, which is exactly the case retention is for: they get the alert anyway.

    python3 broadcast_alert.py                            # service, then both devices
    python3 broadcast_alert.py --role devices             # terminal 1: wait for an alert
    python3 broadcast_alert.py --role service --message "..."   # terminal 2: send one
    python3 broadcast_alert.py --role service --clear     # delete the retained alert

Exit status: 0 when every device received the alert; 1 on a timeout or a wrong
alert; 2 when the broker refused a connection.
"""

import json
import sys
import threading
import uuid

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet_common import FAILED, OK, arguments, connect_or_exit, say

SERVICE = "service-1"
DEVICES = ["device-1", "device-2"]
TOPIC = "fleet/alerts"


def publish_alert(args):
    """Publishes the alert (or clears it); returns its id, or None on failure."""
    service = connect_or_exit(args, SERVICE)
    props = Properties(PacketTypes.PUBLISH)
    if args.clear:
        # A retained message with an empty payload deletes the retained alert.
        ok = service.publish(TOPIC, b"", qos=1, retain=True)
        say(SERVICE, "cleared the retained alert" if ok else "clearing failed")
        service.close()
        return "cleared" if ok else None
    alert_id = str(uuid.uuid4())
    alert = {"id": alert_id, "severity": args.severity, "message": args.message, "by": SERVICE}
    props.MessageExpiryInterval = args.expiry
    props.ContentType = "application/json"
    if not service.publish(TOPIC, json.dumps(alert), qos=1, retain=True, properties=props):
        return None
    say(SERVICE, f"published retained alert to {TOPIC} (expires in {args.expiry} s): {json.dumps(alert)}")
    service.close()
    return alert_id


def receive_alerts(args, alert_id):
    """Connects every device, each waiting for the alert (`alert_id`, or any with
    None); returns the exit status."""
    got = {}
    events = {}
    devices = []
    for name in DEVICES:
        events[name] = threading.Event()

        def on_message(client, userdata, message, name=name):
            if not message.payload:
                return
            alert = json.loads(message.payload)
            if alert_id is not None and alert.get("id") != alert_id:
                say(name, f"ignored an older alert: {message.payload.decode()}")
                return
            kind = "retained alert" if message.retain else "alert"
            say(name, f"received {kind} on {message.topic}: [{alert['severity']}] {alert['message']}")
            got[name] = alert
            events[name].set()

        device = connect_or_exit(args, name)
        device.mqtt.on_message = on_message
        if not device.subscribe(TOPIC, qos=1):
            return FAILED
        devices.append(device)
    status = OK
    for name in DEVICES:
        if not events[name].wait(args.timeout):
            say(name, f"timed out: no alert within {args.timeout} s")
            status = FAILED
    for device in devices:
        device.close()
    if status == OK:
        print(f"all {len(DEVICES)} devices received the alert", flush=True)
    return status


def main():
    parser = arguments(__doc__.splitlines()[0], roles=["both", "service", "devices"])
    parser.add_argument("--message", default="maintenance window starts in 10 minutes", help="the alert text")
    parser.add_argument("--severity", default="warning", help="the alert's severity (default warning)")
    parser.add_argument("--expiry", type=int, default=600, help="seconds the broker keeps the alert (default 600)")
    parser.add_argument("--clear", action="store_true", help="with --role service: delete the retained alert")
    args = parser.parse_args()

    alert_id = None
    if args.role in ("both", "service"):
        alert_id = publish_alert(args)
        if alert_id is None:
            return FAILED
    if args.role in ("both", "devices"):
        return receive_alerts(args, alert_id)
    return OK


if __name__ == "__main__":
    sys.exit(main())
