#!/usr/bin/env python3
"""Command and response: the service commands a device, the device answers (MQTT 5
request/response).

The service (service-1) subscribes to its response topic, then publishes a command
to fleet/<device>/commands with two MQTT 5 properties: Response Topic (where to
answer) and Correlation Data (random bytes naming this request). The device
(default device-2), subscribed to its command topic, carries the command out and
publishes its answer to the Response Topic with the same Correlation Data. The
service prints the answer and checks the correlation data is its own.

    python3 command_response.py                  # both sides, in one process
    python3 command_response.py --role device    # terminal 1: answer --count commands
    python3 command_response.py --role service   # terminal 2: send one command

Exit status: 0 when the answer arrived with the command's correlation data; 1 on a
timeout or a mismatch; 2 when the broker refused the connection.
"""

import json
import os
import sys
import threading

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet_common import FAILED, OK, arguments, connect_or_exit, say

SERVICE = "service-1"


def run_device(args, served):
    """Connects the device and answers commands; sets `served` after --count."""
    device = connect_or_exit(args, args.device)
    answered = [0]

    def on_message(client, userdata, message):
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        command = json.loads(message.payload)
        say(args.device, f"command on {message.topic}: {message.payload.decode()} "
            f"(response topic {response_topic!r}, correlation data {correlation.hex() if correlation else None})")
        if not response_topic:
            say(args.device, "no Response Topic: nowhere to answer")
            return
        reply_props = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            reply_props.CorrelationData = correlation
        reply_props.ContentType = "application/json"
        reply = {"device": args.device, "command": command.get("command"), "status": "done"}
        # No waiting for the PUBACK here: this runs on paho's network thread, which
        # is the one that would receive it.
        client.publish(response_topic, json.dumps(reply), qos=1, properties=reply_props)
        say(args.device, f"answered on {response_topic}: {json.dumps(reply)}")
        answered[0] += 1
        if answered[0] >= args.count:
            served.set()

    device.mqtt.on_message = on_message
    if not device.subscribe(f"fleet/{args.device}/commands", qos=1):
        sys.exit(FAILED)
    return device


def run_service(args):
    """Sends one command and waits for the answer; returns the exit status."""
    service = connect_or_exit(args, SERVICE)
    response_topic = f"fleet/{SERVICE}/responses"
    answers = []
    answered = threading.Event()

    def on_message(client, userdata, message):
        answers.append(message)
        answered.set()

    service.mqtt.on_message = on_message
    if not service.subscribe(response_topic, qos=1):
        return FAILED

    correlation = os.urandom(16)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    props.MessageExpiryInterval = max(1, int(args.timeout))  # a late command is no use
    topic = f"fleet/{args.device}/commands"
    command = {"command": args.command, "by": SERVICE}
    if not service.publish(topic, json.dumps(command), qos=1, properties=props):
        return FAILED
    say(SERVICE, f"sent {json.dumps(command)} to {topic} (correlation data {correlation.hex()})")

    if not answered.wait(args.timeout):
        say(SERVICE, f"timed out: no answer on {response_topic} within {args.timeout} s")
        return FAILED
    answer = answers[0]
    got = getattr(answer.properties, "CorrelationData", None)
    if got != correlation:
        say(SERVICE, f"correlation data mismatch: sent {correlation.hex()}, got {got.hex() if got else None}")
        return FAILED
    say(SERVICE, f"answer from {args.device}: {answer.payload.decode()} (correlation data matches)")
    service.close()
    return OK


def main():
    parser = arguments(__doc__.splitlines()[0], roles=["both", "device", "service"])
    parser.add_argument("--device", default="device-2", help="the device to command (default device-2)")
    parser.add_argument("--command", default="reboot", help="the command to send (default reboot)")
    parser.add_argument("--count", type=int, default=1, help="commands the device answers before it exits (default 1)")
    args = parser.parse_args()

    served = threading.Event()
    device = None
    if args.role in ("both", "device"):
        device = run_device(args, served)
        if args.role == "device":
            say(args.device, f"waiting for {args.count} command(s), at most {args.timeout} s")
    status = OK
    if args.role in ("both", "service"):
        status = run_service(args)
    if device is not None:
        if not served.wait(args.timeout):
            say(args.device, "timed out waiting for commands")
            return FAILED
        device.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
