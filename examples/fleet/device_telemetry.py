#!/usr/bin/env python3
"""Telemetry: a device publishes readings, the backend service receives them.

The device (default device-1) publishes --count telemetry messages at QoS 1 to
fleet/<device>/telemetry, each acknowledged by the broker (PUBACK). The service
(service-1) subscribes to fleet/+/telemetry first and prints each reading as it
arrives.

    python3 device_telemetry.py                  # both sides, in one process
    python3 device_telemetry.py --role service   # terminal 1: wait for readings
    python3 device_telemetry.py --role device    # terminal 2: send them

--device NAME uses certs/NAME.pem instead: `--device rogue` (a certificate from a CA
the broker does not know) and `--device device-3` (from the fleet CA, but not a
registered client) are refused.

Exit status: 0 when every reading was acknowledged (device) and received (service);
1 on a timeout or a wrong message; 2 when the broker refused the connection.
"""

import json
import sys
import threading
import time

from fleet_common import FAILED, OK, arguments, connect_or_exit, say

SERVICE = "service-1"


def main():
    parser = arguments(__doc__.splitlines()[0], roles=["both", "device", "service"])
    parser.add_argument("--device", default="device-1", help="the device's certificate name (default device-1)")
    parser.add_argument("--count", type=int, default=5, help="readings to send (default 5)")
    args = parser.parse_args()

    service = None
    received = []
    all_in = threading.Event()
    if args.role in ("both", "service"):
        service = connect_or_exit(args, SERVICE)

        def on_message(client, userdata, message):
            reading = json.loads(message.payload)
            received.append((message.topic, reading))
            say(SERVICE, f"received on {message.topic} (QoS {message.qos}): {message.payload.decode()}")
            if len(received) >= args.count:
                all_in.set()

        service.mqtt.on_message = on_message
        if not service.subscribe("fleet/+/telemetry", qos=1):
            return FAILED

    if args.role in ("both", "device"):
        device = connect_or_exit(args, args.device)
        topic = f"fleet/{args.device}/telemetry"
        for seq in range(1, args.count + 1):
            reading = {"device": args.device, "seq": seq, "temperature": round(20.0 + seq * 0.25, 2), "ts": time.time()}
            if not device.publish(topic, json.dumps(reading), qos=1):
                return FAILED
            say(args.device, f"published reading {seq}/{args.count} to {topic} (PUBACK received)")
        device.close()

    if service is not None:
        if not all_in.wait(args.timeout):
            say(SERVICE, f"timed out: received {len(received)} of {args.count} readings")
            return FAILED
        service.close()
        if args.role == "both":
            seqs = [r["seq"] for _, r in received if r.get("device") == args.device]
            if seqs != list(range(1, args.count + 1)):
                say(SERVICE, f"readings out of order or missing: {seqs}")
                return FAILED
        say(SERVICE, f"all {args.count} readings received")
    return OK


if __name__ == "__main__":
    sys.exit(main())
