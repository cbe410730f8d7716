#!/usr/bin/env python3
"""Capture independent "golden" MQTT wire packets for mqtt-proto's codec tests.

Dev tool, NOT part of CI. Run it from the repository root after installing the
outside clients:

    scripts/install-clients.sh
    python3 scripts/capture-golden.py

It deletes and rewrites every ``*.bin`` and ``manifest.json`` in
``mqtt-proto/tests/fixtures/golden/`` (README.md there is kept) and prints a
summary. Requires Debian's ``mosquitto`` + ``mosquitto-clients``, paho-mqtt 2.x
and MQTT.js installed in ``tests/clients/js`` (all done by install-clients.sh).

Two kinds of capture:

* client -> server: a tiny fake broker (raw TCP listener on 127.0.0.1 in this
  script) reads packets by fixed header + remaining length, keeps each packet's
  exact bytes, and answers with hand-encoded CONNACK / SUBACK / UNSUBACK /
  PUBACK / PUBREC / PUBREL / PUBCOMP / PINGRESP / AUTH so the client proceeds.
  Driven by mosquitto_pub / mosquitto_sub, paho-mqtt and MQTT.js.
* server -> client: the real Debian ``mosquitto`` broker on a free loopback
  port, talked to by raw-socket clients that hand-encode their packets; the
  exact bytes mosquitto sends back are kept.

Every fixture's ``expect`` block in the manifest is written here, by hand, from
the command line / call that produced it (or, for broker packets, from the MQTT
spec and the broker config written below) -- never from decoding the bytes.
As a consistency check the script then decodes each capture with a small
independent decoder and refuses to write anything if a capture disagrees with
its expectations.

Options: ``--out DIR`` (default: the golden dir), ``-v`` (chatty).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version as pkg_version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = ROOT / "mqtt-proto" / "tests" / "fixtures" / "golden"
JS_DIR = ROOT / "tests" / "clients" / "js"
HOST = "127.0.0.1"
VERBOSE = False

PROTO_LEVEL = {"v31": 3, "v311": 4, "v5": 5}
PROTO_TAG = {3: "v31", 4: "v311", 5: "v5"}

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP = 8, 9, 10, 11, 12, 13
DISCONNECT, AUTH = 14, 15
TYPE_NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC",
    6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE",
    11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}


def log(msg: str) -> None:
    if VERBOSE:
        print(msg, file=sys.stderr, flush=True)


# =========================================================================
# Encoding helpers (used for the fake broker's replies and the raw clients)
# =========================================================================

def vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def u16(n: int) -> bytes:
    return struct.pack("!H", n)


def u32(n: int) -> bytes:
    return struct.pack("!I", n)


def mstr(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return u16(len(b)) + b


def pkt(first: int, body: bytes = b"") -> bytes:
    return bytes([first]) + vbi(len(body)) + body


# MQTT 5.0 property identifiers: name -> (id, type)
PROPS = {
    "payload_format_indicator": (0x01, "byte"),
    "message_expiry_interval": (0x02, "u32"),
    "content_type": (0x03, "str"),
    "response_topic": (0x08, "str"),
    "correlation_data": (0x09, "bin"),
    "subscription_identifier": (0x0B, "vbi"),
    "session_expiry_interval": (0x11, "u32"),
    "assigned_client_identifier": (0x12, "str"),
    "server_keep_alive": (0x13, "u16"),
    "authentication_method": (0x15, "str"),
    "authentication_data": (0x16, "bin"),
    "request_problem_information": (0x17, "byte"),
    "will_delay_interval": (0x18, "u32"),
    "request_response_information": (0x19, "byte"),
    "response_information": (0x1A, "str"),
    "server_reference": (0x1C, "str"),
    "reason_string": (0x1F, "str"),
    "receive_maximum": (0x21, "u16"),
    "topic_alias_maximum": (0x22, "u16"),
    "topic_alias": (0x23, "u16"),
    "maximum_qos": (0x24, "byte"),
    "retain_available": (0x25, "byte"),
    "user_property": (0x26, "pair"),
    "maximum_packet_size": (0x27, "u32"),
    "wildcard_subscription_available": (0x28, "byte"),
    "subscription_identifier_available": (0x29, "byte"),
    "shared_subscription_available": (0x2A, "byte"),
}
PROP_BY_ID = {pid: (name, kind) for name, (pid, kind) in PROPS.items()}


def enc_props(items: list | None) -> bytes:
    """items: list of (name, value); user_property value is a (k, v) pair."""
    body = bytearray()
    for name, value in items or []:
        pid, kind = PROPS[name]
        body += vbi(pid)
        if kind == "byte":
            body.append(value)
        elif kind == "u16":
            body += u16(value)
        elif kind == "u32":
            body += u32(value)
        elif kind == "vbi":
            body += vbi(value)
        elif kind in ("str", "bin"):
            body += mstr(value)
        elif kind == "pair":
            body += mstr(value[0]) + mstr(value[1])
    return vbi(len(body)) + bytes(body)


def enc_connect(level, client_id, keep_alive=60, clean=True, username=None,
                password=None, will=None, props=None) -> bytes:
    flags = 0x02 if clean else 0
    if will:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = mstr("MQIsdp" if level == 3 else "MQTT") + bytes([level, flags]) + u16(keep_alive)
    if level == 5:
        body += enc_props(props)
    body += mstr(client_id)
    if will:
        if level == 5:
            body += enc_props(will.get("props"))
        body += mstr(will["topic"]) + mstr(will["payload"])
    if username is not None:
        body += mstr(username)
    if password is not None:
        body += mstr(password)
    return pkt(0x10, body)


def enc_publish(level, topic, payload, qos=0, retain=False, dup=False, pid=None,
                props=None) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = mstr(topic)
    if qos:
        body += u16(pid)
    if level == 5:
        body += enc_props(props)
    body += payload.encode() if isinstance(payload, str) else payload
    return pkt(first, body)


def enc_ack(ptype: int, pid: int, level: int = 4, reason=None, props=None) -> bytes:
    """PUBACK / PUBREC / PUBREL / PUBCOMP."""
    first = (ptype << 4) | (0x02 if ptype == PUBREL else 0)
    body = u16(pid)
    if level == 5 and (reason or props):
        body += bytes([reason or 0])
        if props:
            body += enc_props(props)
    return pkt(first, body)


def enc_subscribe(level, pid, filters, props=None) -> bytes:
    """filters: list of (filter, options byte)."""
    body = u16(pid)
    if level == 5:
        body += enc_props(props)
    for f, opts in filters:
        body += mstr(f) + bytes([opts])
    return pkt(0x82, body)


def sub_opts(qos, nl=False, rap=False, rh=0) -> int:
    return qos | (0x04 if nl else 0) | (0x08 if rap else 0) | (rh << 4)


def enc_unsubscribe(level, pid, filters, props=None) -> bytes:
    body = u16(pid)
    if level == 5:
        body += enc_props(props)
    for f in filters:
        body += mstr(f)
    return pkt(0xA2, body)


def enc_connack(level, rc=0, session_present=False, props=None) -> bytes:
    body = bytes([1 if session_present else 0, rc])
    if level == 5:
        body += enc_props(props)
    return pkt(0x20, body)


def enc_suback(level, pid, codes, props=None) -> bytes:
    body = u16(pid)
    if level == 5:
        body += enc_props(props)
    return pkt(0x90, body + bytes(codes))


def enc_unsuback(level, pid, count) -> bytes:
    if level == 5:
        return pkt(0xB0, u16(pid) + enc_props(None) + bytes([0] * count))
    return pkt(0xB0, u16(pid))


def enc_auth(rc, props) -> bytes:
    return pkt(0xF0, bytes([rc]) + enc_props(props))


PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"


def enc_disconnect(level, reason=None, props=None) -> bytes:
    if level == 5 and (reason or props):
        return pkt(0xE0, bytes([reason or 0]) + (enc_props(props) if props else b""))
    return pkt(0xE0)


# =========================================================================
# Reading packets off a socket
# =========================================================================

def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:
                raise EOFError(f"connection closed mid-packet ({len(buf)}/{n} bytes)")
            return None
        buf += chunk
    return bytes(buf)


def read_packet(sock: socket.socket) -> bytes | None:
    """One complete packet's exact bytes, or None on a clean EOF."""
    first = _read_exact(sock, 1)
    if first is None:
        return None
    header = bytearray(first)
    rl, mult = 0, 1
    for i in range(4):
        b = _read_exact(sock, 1)
        if b is None:
            raise EOFError("connection closed inside remaining length")
        header += b
        rl += (b[0] & 0x7F) * mult
        mult *= 128
        if not b[0] & 0x80:
            break
    else:
        raise ValueError("remaining length longer than 4 bytes")
    body = _read_exact(sock, rl) if rl else b""
    if body is None:
        raise EOFError("connection closed before packet body")
    return bytes(header) + body


# =========================================================================
# Independent decoder -- only used to cross-check captures against the
# hand-written expectations (never to produce them).
# =========================================================================

class Reader:
    def __init__(self, data: bytes):
        self.d, self.p = data, 0

    def left(self) -> int:
        return len(self.d) - self.p

    def take(self, n: int) -> bytes:
        if self.left() < n:
            raise ValueError(f"truncated: need {n}, have {self.left()}")
        b = self.d[self.p:self.p + n]
        self.p += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("!I", self.take(4))[0]

    def vbi(self) -> int:
        n, mult = 0, 1
        for _ in range(4):
            b = self.u8()
            n += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                return n
        raise ValueError("bad variable byte integer")

    def bin(self) -> bytes:
        return self.take(self.u16())

    def str(self) -> str:
        return self.bin().decode("utf-8")


def dec_props(r: Reader) -> dict:
    n = r.vbi()
    sub = Reader(r.take(n))
    out: dict = {}
    while sub.left():
        pid = sub.vbi()
        if pid not in PROP_BY_ID:
            raise ValueError(f"unknown property id 0x{pid:02x}")
        name, kind = PROP_BY_ID[pid]
        if kind == "byte":
            v = sub.u8()
        elif kind == "u16":
            v = sub.u16()
        elif kind == "u32":
            v = sub.u32()
        elif kind == "vbi":
            v = sub.vbi()
        elif kind == "str":
            v = sub.str()
        elif kind == "bin":
            v = sub.bin()
        else:
            v = [sub.str(), sub.str()]
        if name == "user_property":
            out.setdefault("user_properties", []).append(v)
        elif name == "subscription_identifier":
            out.setdefault("subscription_identifiers", []).append(v)
        elif name in out:
            raise ValueError(f"duplicate property {name}")
        else:
            out[name] = v
    return out


def decode(raw: bytes, level: int) -> dict:
    """Decode one packet into the manifest's ``expect`` vocabulary."""
    r0 = Reader(raw)
    first = r0.u8()
    rl = r0.vbi()
    if r0.left() != rl:
        raise ValueError(f"remaining length {rl} but {r0.left()} bytes follow")
    t, flags = first >> 4, first & 0x0F
    name = TYPE_NAMES.get(t)
    if name is None:
        raise ValueError(f"reserved packet type {t}")
    r = Reader(r0.take(rl))
    d: dict = {"packet_type": name}
    want_flags = {PUBREL: 2, SUBSCRIBE: 2, UNSUBSCRIBE: 2}.get(t, 0)
    if t != PUBLISH and flags != want_flags:
        raise ValueError(f"{name}: reserved flags {flags:#x}, want {want_flags:#x}")
    v5 = level == 5
    if t == CONNECT:
        d["protocol_name"] = r.str()
        d["protocol_level"] = lvl = r.u8()
        v5 = lvl == 5
        cf = r.u8()
        if cf & 0x01:
            raise ValueError("CONNECT reserved flag set")
        d["clean_start"] = bool(cf & 0x02)
        d["keep_alive"] = r.u16()
        if v5:
            d["properties"] = dec_props(r)
        d["client_id"] = r.str()
        if cf & 0x04:
            w: dict = {}
            if v5:
                w["properties"] = dec_props(r)
            w["topic"] = r.str()
            w["payload"] = r.bin()
            w["qos"] = (cf >> 3) & 3
            w["retain"] = bool(cf & 0x20)
            d["will"] = w
        else:
            if cf & 0x38:
                raise ValueError("will qos/retain without will flag")
            d["will"] = None
        d["username"] = r.str() if cf & 0x80 else None
        d["password"] = r.bin() if cf & 0x40 else None
    elif t == CONNACK:
        ack = r.u8()
        if ack & 0xFE:
            raise ValueError("CONNACK reserved flags")
        d["session_present"] = bool(ack & 1)
        d["reason_code"] = r.u8()
        if v5:
            d["properties"] = dec_props(r)
    elif t == PUBLISH:
        d["dup"] = bool(flags & 8)
        d["qos"] = (flags >> 1) & 3
        d["retain"] = bool(flags & 1)
        if d["qos"] == 3:
            raise ValueError("PUBLISH qos 3")
        d["topic"] = r.str()
        if d["qos"]:
            d["packet_id"] = r.u16()
        if v5:
            d["properties"] = dec_props(r)
        d["payload"] = r.take(r.left())
    elif t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        d["packet_id"] = r.u16()
        if v5:
            d["reason_code"] = r.u8() if r.left() else 0
            d["properties"] = dec_props(r) if r.left() else {}
    elif t == SUBSCRIBE:
        d["packet_id"] = r.u16()
        if v5:
            p = dec_props(r)
            if "subscription_identifiers" in p:
                (p["subscription_identifier"],) = p.pop("subscription_identifiers")
            d["properties"] = p
        d["filters"] = []
        while r.left():
            f = {"filter": r.str()}
            o = r.u8()
            f["qos"] = o & 3
            if v5:
                f["no_local"] = bool(o & 4)
                f["retain_as_published"] = bool(o & 8)
                f["retain_handling"] = (o >> 4) & 3
                if o & 0xC0:
                    raise ValueError("subscription options reserved bits")
            elif o & 0xFC:
                raise ValueError("requested qos reserved bits")
            d["filters"].append(f)
    elif t in (SUBACK, UNSUBACK):
        d["packet_id"] = r.u16()
        if v5:
            d["properties"] = dec_props(r)
        if t == SUBACK or v5:
            d["reason_codes"] = list(r.take(r.left()))
    elif t == UNSUBSCRIBE:
        d["packet_id"] = r.u16()
        if v5:
            d["properties"] = dec_props(r)
        d["filters"] = []
        while r.left():
            d["filters"].append(r.str())
    elif t in (DISCONNECT, AUTH):
        if v5:
            d["reason_code"] = r.u8() if r.left() else 0
            d["properties"] = dec_props(r) if r.left() else {}
    if r.left():
        raise ValueError(f"{name}: {r.left()} trailing bytes")
    return d


def minimal_encoding(raw: bytes, level: int) -> str | None:
    """None if `raw` is the shortest encoding of its content, else why not.

    MQTT lets an encoder omit some trailing fields (v5 ack/DISCONNECT/AUTH
    reason code 0x00 and an empty property block) and says variable byte
    integers should be minimal; a codec that always writes the shortest form
    can only reproduce fixtures for which this returns None."""
    r = Reader(raw)
    r.u8()
    start = r.p
    rl = r.vbi()
    if r.p - start != len(vbi(rl)):
        return "remaining length is not a minimal variable byte integer"
    t = raw[0] >> 4
    body = raw[r.p:]
    if level == 5 and t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        if len(body) == 3 and body[2] == 0:
            return "explicit reason code 0x00 with no properties (may be omitted)"
        if len(body) == 4 and body[3] == 0:
            return ("explicit reason code 0x00 and empty property length (both may be omitted)"
                    if body[2] == 0 else "explicit empty property length (may be omitted)")
    if level == 5 and t in (DISCONNECT, AUTH):
        if len(body) == 1 and body[0] == 0:
            return "explicit reason code 0x00 with no properties (may be omitted)"
        if len(body) == 2 and body[1] == 0:
            return "explicit empty property length (may be omitted)"
    return None


ANY = "<any>"


def compare(expect, got, path="expect") -> list[str]:
    """Every key in `expect` must match `got`. A `*_hex` key compares the hex
    of a binary field; a str compared with bytes compares the utf-8 text; the
    string "<any>" accepts any value. A "properties" dict is exhaustive."""
    errs: list[str] = []
    if isinstance(expect, dict):
        if not isinstance(got, dict):
            return [f"{path}: expected an object, got {got!r}"]
        for k, ev in expect.items():
            gk = k[:-4] if k.endswith("_hex") and k not in got else k
            if gk not in got:
                errs.append(f"{path}.{k}: missing in capture")
                continue
            gv = got[gk]
            if k != gk:
                gv = gv.hex() if isinstance(gv, (bytes, bytearray)) else gv
            errs += compare(ev, gv, f"{path}.{k}")
        if path.endswith(".properties"):
            extra = set(got) - {k[:-4] if k.endswith("_hex") else k for k in expect}
            if extra:
                errs.append(f"{path}: unexpected properties {sorted(extra)}: "
                            f"{ {k: got[k] for k in extra} }")
        return errs
    if expect == ANY:
        return []
    if isinstance(expect, list):
        if not isinstance(got, list) or len(got) != len(expect):
            return [f"{path}: expected {expect!r}, got {got!r}"]
        for i, (e, g) in enumerate(zip(expect, got)):
            errs += compare(e, g, f"{path}[{i}]")
        return errs
    if isinstance(got, (bytes, bytearray)) and isinstance(expect, str):
        try:
            got = got.decode("utf-8")
        except UnicodeDecodeError:
            return [f"{path}: expected text {expect!r}, got binary {got.hex()}"]
    if expect != got or type(expect) is not type(got):
        return [f"{path}: expected {expect!r}, got {got!r}"]
    return []


# =========================================================================
# Fixture collection
# =========================================================================

class Golden:
    def __init__(self, outdir: Path, sources: dict[str, str]):
        self.outdir = outdir
        self.sources = sources  # source key -> "name version" description
        self.entries: list[dict] = []
        self.blobs: dict[str, bytes] = {}
        self.counters: dict[tuple[str, str], int] = {}
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.checked = 0
        self.duplicates = 0
        self.seen: set[tuple[int, bytes]] = set()

    def add(self, *, source: str, proto: str, raw: bytes, packet_type: str,
            direction: str, command: str, expect: dict, write: bool = True,
            note: str | None = None) -> None:
        level = PROTO_LEVEL[proto]
        self.checked += 1
        label = f"{source}/{proto}/{packet_type} ({command[:90]})"
        try:
            got = decode(raw, level)
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"{label}: undecodable {raw.hex()}: {e}")
            return
        if got["packet_type"] != packet_type:
            self.errors.append(f"{label}: captured a {got['packet_type']}: {raw.hex()}")
            return
        for err in compare(expect, got):
            self.errors.append(f"{label}: {err}  [bytes {raw.hex()}]")
        if not write:
            return
        if (level, raw) in self.seen:
            # Byte-identical to a fixture already kept for this protocol
            # level (e.g. every v3.1.1 client's PUBACK 40 02 10 01).
            self.duplicates += 1
            return
        self.seen.add((level, raw))
        n = self.counters.get((source, proto), 0) + 1
        self.counters[(source, proto)] = n
        fname = f"{source}-{proto}-{n:03d}-{packet_type.lower()}.bin"
        self.blobs[fname] = raw
        entry = {
            "file": fname,
            "source": self.sources[source],
            "protocol_level": level,
            "direction": direction,
            "packet_type": packet_type,
            "command": command,
            "expect": expect,
        }
        why = minimal_encoding(raw, level)
        entry["minimal_encoding"] = why is None
        if why:
            entry["not_minimal_because"] = why
        if note:
            entry["note"] = note
        self.entries.append(entry)
        log(f"  + {fname}: {raw.hex()}")

    def write(self) -> None:
        self.outdir.mkdir(parents=True, exist_ok=True)
        for p in self.outdir.iterdir():
            if p.name == "README.md":
                continue
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        for fname, raw in self.blobs.items():
            (self.outdir / fname).write_bytes(raw)
        with open(self.outdir / "manifest.json", "w", encoding="utf-8") as f:
            json.dump(self.entries, f, indent=2, ensure_ascii=False)
            f.write("\n")


# =========================================================================
# Fake broker for client -> server captures
# =========================================================================

class FakeBroker:
    """Accepts one connection, records every packet's exact bytes and answers
    just enough for the client to carry on.

    push: PUBLISH packets (qos, topic, payload, packet_id) sent to the client
    once, right after answering the first packet of type `push_after`.
    connack_props: v5 CONNACK properties. A v5 CONNECT carrying an
    authentication method is answered with AUTH 0x18 (continue) and the
    client's AUTH with the CONNACK."""

    def __init__(self, push=(), push_after=SUBSCRIBE, connack_props=None):
        self.push = list(push)
        self.push_after = push_after
        self.connack_props = connack_props
        self.packets: list[bytes] = []
        self.cond = threading.Condition()
        self.done = False
        self.error: BaseException | None = None
        self.lsock = socket.create_server((HOST, 0))
        self.lsock.settimeout(30)
        self.port = self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn = None
        try:
            conn, _ = self.lsock.accept()
            conn.settimeout(30)
            level, pushed = 4, False
            while True:
                raw = read_packet(conn)
                if raw is None:
                    break
                t = raw[0] >> 4
                with self.cond:
                    self.packets.append(raw)
                    self.cond.notify_all()
                d = decode(raw, level)
                log(f"    fake broker <- {d['packet_type']} {raw.hex()}")
                out = b""
                if t == CONNECT:
                    level = d["protocol_level"]
                    method = d.get("properties", {}).get("authentication_method")
                    if method:
                        out = enc_auth(0x18, [("authentication_method", method),
                                              ("authentication_data", "server-challenge")])
                    else:
                        out = enc_connack(level, props=self.connack_props)
                elif t == AUTH:
                    out = enc_connack(level, props=[("authentication_method",
                                                     d["properties"]["authentication_method"])])
                elif t == PUBLISH:
                    if d["qos"] == 1:
                        out = enc_ack(PUBACK, d["packet_id"], level)
                    elif d["qos"] == 2:
                        out = enc_ack(PUBREC, d["packet_id"], level)
                elif t == PUBREL:
                    out = enc_ack(PUBCOMP, d["packet_id"], level)
                elif t == PUBREC:
                    out = enc_ack(PUBREL, d["packet_id"], level)
                elif t == SUBSCRIBE:
                    out = enc_suback(level, d["packet_id"], [f["qos"] for f in d["filters"]])
                elif t == UNSUBSCRIBE:
                    out = enc_unsuback(level, d["packet_id"], len(d["filters"]))
                elif t == PINGREQ:
                    out = PINGRESP_BYTES
                if t == self.push_after and not pushed:
                    pushed = True
                    for qos, topic, payload, pid in self.push:
                        out += enc_publish(level, topic, payload, qos=qos, pid=pid)
                if out:
                    conn.sendall(out)
                if t == DISCONNECT:
                    break
        except BaseException as e:  # noqa: BLE001
            self.error = e
        finally:
            if conn is not None:
                conn.close()
            self.lsock.close()
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def count(self, t: int) -> int:
        return sum(1 for p in self.packets if p[0] >> 4 == t)

    def wait_for(self, t: int, n: int = 1, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.count(t) < n:
                left = deadline - time.monotonic()
                if left <= 0 or self.done:
                    raise TimeoutError(f"fake broker never saw {n} x {TYPE_NAMES[t]}; "
                                       f"got {[TYPE_NAMES[p[0] >> 4] for p in self.packets]}")
                self.cond.wait(left)

    def finish(self, timeout: float = 15) -> list[bytes]:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError("fake broker: client did not close the connection")
        if self.error:
            raise RuntimeError(f"fake broker failed: {self.error!r}")
        return self.packets


def E(packet_type: str, expect: dict, command: str | None = None, write: bool = True,
      note: str | None = None) -> dict:
    """One expected client packet (matched to captures by type, in order)."""
    return {"type": packet_type, "expect": expect, "command": command, "write": write,
            "note": note}


def run_fake(g: Golden, *, source: str, proto: str, driver, expected: list[dict],
             command: str, push=(), push_after=SUBSCRIBE, connack_props=None,
             ignore_extra=("PINGREQ",)) -> None:
    """Run `driver(port, broker)` against a fresh FakeBroker and file the
    captured client packets against `expected`. The k-th expected packet of a
    type is matched with the k-th captured packet of that type; extra
    captures of a type in `ignore_extra` (keepalive PINGREQs) are dropped."""
    log(f"[{source} {proto}] {command}")
    broker = FakeBroker(push=push, push_after=push_after, connack_props=connack_props)
    try:
        driver(broker.port, broker)
        packets = broker.finish()
    except Exception as e:  # noqa: BLE001
        g.errors.append(f"{source}/{proto} '{command}': {e}")
        return
    by_type: dict[str, list[dict]] = {}
    for e in expected:
        by_type.setdefault(e["type"], []).append(e)
    used: dict[str, int] = {}
    for raw in packets:
        name = TYPE_NAMES[raw[0] >> 4]
        i = used.get(name, 0)
        used[name] = i + 1
        cands = by_type.get(name, [])
        if i >= len(cands):
            if name not in ignore_extra:
                g.errors.append(f"{source}/{proto} '{command}': unexpected extra "
                                f"{name} {raw.hex()}")
            continue
        e = cands[i]
        g.add(source=source, proto=proto, raw=raw, packet_type=name,
              direction="client-to-server", command=e["command"] or command,
              expect=e["expect"], write=e["write"], note=e["note"])
    for name, cands in by_type.items():
        if used.get(name, 0) < len(cands):
            g.errors.append(f"{source}/{proto} '{command}': expected {len(cands)} x {name}, "
                            f"captured {used.get(name, 0)}")


def cli_driver(argv: list[str], cwd: Path | None = None):
    def drive(port: int, _broker: FakeBroker) -> None:
        args = [a.replace("{port}", str(port)) for a in argv]
        res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=40)
        if res.returncode != 0:
            raise RuntimeError(f"exit {res.returncode}: {res.stderr.strip()} {res.stdout.strip()}")
    return drive


# =========================================================================
# Client -> server scenarios
# =========================================================================

# Packets the fake broker pushes to subscribers: the client must answer the
# QoS 1 one with PUBACK and the QoS 2 one with PUBREC, then (after our
# PUBREL) PUBCOMP.
PUSH_Q1 = (1, "brokk/pushed/one", "pushed-q1", 0x1001)
PUSH_Q2 = (2, "brokk/pushed/two", "pushed-q2", 0x1002)
PUSH = (PUSH_Q1, PUSH_Q2)
ACKS_FOR_PUSH = [
    ("PUBACK", PUSH_Q1[3]),
    ("PUBREC", PUSH_Q2[3]),
    ("PUBCOMP", PUSH_Q2[3]),
]


def ack_expect(proto: str, pid: int) -> dict:
    e = {"packet_id": pid}
    if proto == "v5":
        e.update(reason_code=0, properties={})
    return e


def push_acks(proto: str, write=True) -> list[dict]:
    return [E(t, ack_expect(proto, pid), write=write) for t, pid in ACKS_FOR_PUSH]


LIBMOSQ_RECEIVE_MAX = 20
LIBMOSQ_RECEIVE_MAX_NOTE = ("libmosquitto adds receive-maximum 20 (its default) to every v5 CONNECT "
                            "unless one is given with -D connect receive-maximum")


def mosquitto_cli_scenarios(g: Golden) -> None:
    pub = ["mosquitto_pub", "-h", HOST, "-p", "{port}"]
    sub = ["mosquitto_sub", "-h", HOST, "-p", "{port}"]

    def go(source, proto, argv, expected, **kw):
        run_fake(g, source=source, proto=proto, driver=cli_driver(argv),
                 expected=expected, command=shlex.join(argv).replace("'{port}'", "PORT"), **kw)

    # --- mosquitto_pub, MQTT 3.1: QoS 1 --------------------------------
    go("mosquitto_pub", "v31",
       pub + ["-V", "mqttv31", "-i", "mpub-v31", "-k", "30",
              "-t", "brokk/golden/v31", "-m", "hello v3.1", "-q", "1"],
       [E("CONNECT", {"protocol_name": "MQIsdp", "protocol_level": 3, "client_id": "mpub-v31",
                      "keep_alive": 30, "clean_start": True, "will": None,
                      "username": None, "password": None}),
        E("PUBLISH", {"topic": "brokk/golden/v31", "qos": 1, "retain": False, "dup": False,
                      "packet_id": 1, "payload": "hello v3.1"}),
        E("DISCONNECT", {})])

    # --- mosquitto_pub, MQTT 3.1: QoS 2, retained, will, credentials -----
    go("mosquitto_pub", "v31",
       pub + ["-V", "mqttv31", "-i", "mpub-v31-q2", "-k", "15", "-u", "carol", "-P", "pw31",
              "--will-topic", "brokk/will/v31", "--will-payload", "v31 gone",
              "--will-qos", "2", "-t", "brokk/golden/v31/q2", "-m", "q2 v3.1", "-q", "2", "-r"],
       [E("CONNECT", {"protocol_name": "MQIsdp", "protocol_level": 3,
                      "client_id": "mpub-v31-q2", "keep_alive": 15, "clean_start": True,
                      "will": {"topic": "brokk/will/v31", "payload": "v31 gone", "qos": 2,
                               "retain": False},
                      "username": "carol", "password": "pw31"}),
        E("PUBLISH", {"topic": "brokk/golden/v31/q2", "qos": 2, "retain": True, "dup": False,
                      "packet_id": 1, "payload": "q2 v3.1"}),
        E("PUBREL", {"packet_id": 1}),
        E("DISCONNECT", {}, write=False)])

    # --- mosquitto_pub, MQTT 3.1.1: QoS 2 retained, will, credentials ----
    go("mosquitto_pub", "v311",
       pub + ["-V", "mqttv311", "-i", "mpub-v311", "-k", "45", "--nodelay",
              "-u", "alice", "-P", "s3cret",
              "--will-topic", "brokk/will/mpub", "--will-payload", "mpub gone",
              "--will-qos", "1", "--will-retain",
              "-t", "brokk/golden/v311", "-m", "retained q2", "-q", "2", "-r"],
       [E("CONNECT", {"protocol_name": "MQTT", "protocol_level": 4, "client_id": "mpub-v311",
                      "keep_alive": 45, "clean_start": True,
                      "will": {"topic": "brokk/will/mpub", "payload": "mpub gone", "qos": 1,
                               "retain": True},
                      "username": "alice", "password": "s3cret"}),
        E("PUBLISH", {"topic": "brokk/golden/v311", "qos": 2, "retain": True, "dup": False,
                      "packet_id": 1, "payload": "retained q2"}),
        E("PUBREL", {"packet_id": 1}),
        E("DISCONNECT", {})])

    # --- mosquitto_pub, MQTT 3.1.1: persistent session, empty retained ---
    go("mosquitto_pub", "v311",
       pub + ["-V", "mqttv311", "-i", "mpub-v311-clear", "-c", "-k", "600",
              "-t", "brokk/golden/clear", "-n", "-r"],
       [E("CONNECT", {"protocol_name": "MQTT", "protocol_level": 4,
                      "client_id": "mpub-v311-clear", "keep_alive": 600, "clean_start": False,
                      "will": None, "username": None, "password": None}),
        E("PUBLISH", {"topic": "brokk/golden/clear", "qos": 0, "retain": True, "dup": False,
                      "payload": ""}),
        E("DISCONNECT", {}, write=False)])

    # --- mosquitto_pub, MQTT 5: every PUBLISH property -------------------
    go("mosquitto_pub", "v5",
       pub + ["-V", "mqttv5", "-i", "mpub-v5", "-k", "60",
              "-D", "connect", "session-expiry-interval", "3600",
              "-D", "connect", "receive-maximum", "10",
              "-D", "connect", "maximum-packet-size", "65536",
              "-D", "connect", "topic-alias-maximum", "5",
              "-D", "connect", "request-response-information", "1",
              "-D", "connect", "request-problem-information", "0",
              "-D", "connect", "user-property", "ck", "cv",
              "-D", "publish", "user-property", "k", "v",
              "-D", "publish", "user-property", "k", "v2",
              "-D", "publish", "response-topic", "brokk/reply",
              "-D", "publish", "correlation-data", "corr-123",
              "-D", "publish", "message-expiry-interval", "60",
              "-D", "publish", "content-type", "application/json",
              "-D", "publish", "payload-format-indicator", "1",
              "-D", "disconnect", "session-expiry-interval", "0",
              "-D", "disconnect", "user-property", "bye", "now",
              "-t", "brokk/golden/v5/props", "-m", '{"x":1}', "-q", "1"],
       [E("CONNECT", {"protocol_name": "MQTT", "protocol_level": 5, "client_id": "mpub-v5",
                      "keep_alive": 60, "clean_start": True, "will": None,
                      "username": None, "password": None,
                      "properties": {"session_expiry_interval": 3600, "receive_maximum": 10,
                                     "maximum_packet_size": 65536, "topic_alias_maximum": 5,
                                     "request_response_information": 1,
                                     "request_problem_information": 0,
                                     "user_properties": [["ck", "cv"]]}}),
        E("PUBLISH", {"topic": "brokk/golden/v5/props", "qos": 1, "retain": False, "dup": False,
                      "packet_id": 1, "payload": '{"x":1}',
                      "properties": {"user_properties": [["k", "v"], ["k", "v2"]],
                                     "response_topic": "brokk/reply",
                                     "correlation_data": "corr-123",
                                     "message_expiry_interval": 60,
                                     "content_type": "application/json",
                                     "payload_format_indicator": 1}}),
        E("DISCONNECT", {"reason_code": 0,
                         "properties": {"session_expiry_interval": 0,
                                        "user_properties": [["bye", "now"]]}})],
       connack_props=[("topic_alias_maximum", 10)])

    # --- mosquitto_pub, MQTT 5: QoS 2, will + will properties, -x, topic alias
    go("mosquitto_pub", "v5",
       pub + ["-V", "mqttv5", "-i", "mpub-v5-will", "-k", "10", "-c", "-x", "600",
              "-u", "bob", "-P", "pw5",
              "--will-topic", "brokk/will/v5", "--will-payload", "bye v5",
              "--will-qos", "2", "--will-retain",
              "-D", "will", "will-delay-interval", "30",
              "-D", "will", "content-type", "text/plain",
              "-D", "will", "payload-format-indicator", "1",
              "-D", "will", "message-expiry-interval", "120",
              "-D", "will", "response-topic", "brokk/will/reply",
              "-D", "will", "correlation-data", "will-corr",
              "-D", "will", "user-property", "wk", "wv",
              "-D", "publish", "topic-alias", "3",
              "-t", "brokk/golden/v5/q2", "-m", "q2 v5", "-q", "2"],
       [E("CONNECT", {"protocol_name": "MQTT", "protocol_level": 5,
                      "client_id": "mpub-v5-will", "keep_alive": 10, "clean_start": False,
                      "username": "bob", "password": "pw5",
                      "properties": {"session_expiry_interval": 600,
                                     "receive_maximum": LIBMOSQ_RECEIVE_MAX},
                      "will": {"topic": "brokk/will/v5", "payload": "bye v5", "qos": 2,
                               "retain": True,
                               "properties": {"will_delay_interval": 30,
                                              "content_type": "text/plain",
                                              "payload_format_indicator": 1,
                                              "message_expiry_interval": 120,
                                              "response_topic": "brokk/will/reply",
                                              "correlation_data": "will-corr",
                                              "user_properties": [["wk", "wv"]]}}},
          note=LIBMOSQ_RECEIVE_MAX_NOTE),
        E("PUBLISH", {"topic": "brokk/golden/v5/q2", "qos": 2, "retain": False, "dup": False,
                      "packet_id": 1, "payload": "q2 v5",
                      "properties": {"topic_alias": 3}}),
        E("PUBREL", {"packet_id": 1, "reason_code": 0, "properties": {}}),
        E("DISCONNECT", {"reason_code": 0, "properties": {}})],
       connack_props=[("topic_alias_maximum", 10)])

    # --- mosquitto_sub, MQTT 3.1: QoS 2 subscription, receives pushes ------
    go("mosquitto_sub", "v31",
       sub + ["-V", "mqttv31", "-i", "msub-v31", "-k", "20",
              "-t", "brokk/golden/v31/#", "-q", "2", "-C", "2"],
       [E("CONNECT", {"protocol_name": "MQIsdp", "protocol_level": 3, "client_id": "msub-v31",
                      "keep_alive": 20, "clean_start": True, "will": None,
                      "username": None, "password": None}),
        E("SUBSCRIBE", {"packet_id": 1, "filters": [{"filter": "brokk/golden/v31/#", "qos": 2}]}),
        *push_acks("v31"),
        E("DISCONNECT", {}, write=False)],
       push=PUSH)

    # --- mosquitto_sub, MQTT 3.1.1: two filters, unsubscribe, will ---------
    go("mosquitto_sub", "v311",
       sub + ["-V", "mqttv311", "-i", "msub-v311", "-k", "5", "--nodelay",
              "--will-topic", "brokk/will/msub", "--will-payload", "", "--will-qos", "0",
              "-t", "brokk/a/+", "-t", "brokk/b/#", "-q", "1", "-U", "brokk/old/#", "-C", "2"],
       [E("CONNECT", {"protocol_name": "MQTT", "protocol_level": 4, "client_id": "msub-v311",
                      "keep_alive": 5, "clean_start": True,
                      "will": {"topic": "brokk/will/msub", "payload": "", "qos": 0,
                               "retain": False},
                      "username": None, "password": None}),
        E("SUBSCRIBE", {"packet_id": 1, "filters": [{"filter": "brokk/a/+", "qos": 1},
                                                    {"filter": "brokk/b/#", "qos": 1}]}),
        E("UNSUBSCRIBE", {"packet_id": 2, "filters": ["brokk/old/#"]}),
        *push_acks("v311"),
        E("DISCONNECT", {}, write=False)],
       push=PUSH, push_after=UNSUBSCRIBE)

    # --- mosquitto_sub, MQTT 5: subscription identifier, user properties ---
    go("mosquitto_sub", "v5",
       sub + ["-V", "mqttv5", "-i", "msub-v5", "-k", "30",
              "-D", "connect", "user-property", "ck", "cv",
              "-D", "subscribe", "subscription-identifier", "7",
              "-D", "subscribe", "user-property", "sk", "sv",
              "-D", "unsubscribe", "user-property", "uk", "uv",
              "-D", "disconnect", "user-property", "dk", "dv",
              "-t", "brokk/golden/v5/#", "-q", "2", "-U", "brokk/old/v5", "-C", "2"],
       [E("CONNECT", {"protocol_name": "MQTT", "protocol_level": 5, "client_id": "msub-v5",
                      "keep_alive": 30, "clean_start": True, "will": None,
                      "username": None, "password": None,
                      "properties": {"user_properties": [["ck", "cv"]], "receive_maximum": 2}},
          note="mosquitto_sub puts its -C message count (here 2) into receive-maximum; "
               "without -C it sends libmosquitto's default 20"),
        E("SUBSCRIBE", {"packet_id": 1,
                        "properties": {"subscription_identifier": 7,
                                       "user_properties": [["sk", "sv"]]},
                        "filters": [{"filter": "brokk/golden/v5/#", "qos": 2, "no_local": False,
                                     "retain_as_published": False, "retain_handling": 0}]}),
        E("UNSUBSCRIBE", {"packet_id": 2, "properties": {"user_properties": [["uk", "uv"]]},
                          "filters": ["brokk/old/v5"]}),
        *push_acks("v5"),
        E("DISCONNECT", {"reason_code": 0, "properties": {"user_properties": [["dk", "dv"]]}})],
       push=PUSH, push_after=UNSUBSCRIBE)


def paho_scenarios(g: Golden) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode
    from paho.mqtt.subscribeoptions import SubscribeOptions

    def client(cid, protocol, **kw):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=protocol, **kw)
        c.enable_logger() if VERBOSE else None
        return c

    def finish(c, broker, info_list=()):
        for info in info_list:
            info.wait_for_publish(10)
            if not info.is_published():
                raise RuntimeError(f"paho publish mid {info.mid} not completed")

    # ---------------------------------------------------------------- v3.1
    calls31 = {
        "connect": "Client(CallbackAPIVersion.VERSION2, client_id='paho-v31', protocol=MQTTv31, "
                   "clean_session=True); will_set('brokk/will/paho31', b'\\x00\\x01\\xfe\\xff', qos=1, "
                   "retain=False); connect('127.0.0.1', PORT, keepalive=2)",
        "subscribe": "subscribe([('brokk/paho31/a', 0), ('brokk/paho31/b/#', 1), "
                     "('brokk/paho31/+/c', 2)])",
        "publish": "publish('brokk/paho31/q2', b'paho v3.1 q2', qos=2, retain=False)",
        "unsubscribe": "unsubscribe(['brokk/paho31/a', 'brokk/paho31/b/#'])",
        "ping": "(idle for keepalive=2 s: library PINGREQ)",
        "disconnect": "disconnect()",
    }

    def drive31(port, broker):
        c = client("paho-v31", mqtt.MQTTv31, clean_session=True)
        c.will_set("brokk/will/paho31", b"\x00\x01\xfe\xff", qos=1, retain=False)
        c.connect(HOST, port, keepalive=2)
        c.loop_start()
        try:
            c.subscribe([("brokk/paho31/a", 0), ("brokk/paho31/b/#", 1), ("brokk/paho31/+/c", 2)])
            broker.wait_for(SUBSCRIBE)
            info = c.publish("brokk/paho31/q2", b"paho v3.1 q2", qos=2, retain=False)
            finish(c, broker, [info])
            c.unsubscribe(["brokk/paho31/a", "brokk/paho31/b/#"])
            broker.wait_for(UNSUBSCRIBE)
            broker.wait_for(PINGREQ, timeout=8)
            c.disconnect()
        finally:
            c.loop_stop()

    run_fake(g, source="paho", proto="v31", driver=drive31, command="paho-mqtt v3.1 session",
             expected=[
                 E("CONNECT", {"protocol_name": "MQIsdp", "protocol_level": 3,
                               "client_id": "paho-v31", "keep_alive": 2, "clean_start": True,
                               "will": {"topic": "brokk/will/paho31", "payload_hex": "0001feff",
                                        "qos": 1, "retain": False},
                               "username": None, "password": None}, calls31["connect"]),
                 E("SUBSCRIBE", {"packet_id": 1, "filters": [
                     {"filter": "brokk/paho31/a", "qos": 0},
                     {"filter": "brokk/paho31/b/#", "qos": 1},
                     {"filter": "brokk/paho31/+/c", "qos": 2}]}, calls31["subscribe"]),
                 E("PUBLISH", {"topic": "brokk/paho31/q2", "qos": 2, "retain": False,
                               "dup": False, "packet_id": 2, "payload": "paho v3.1 q2"},
                   calls31["publish"]),
                 E("PUBREL", {"packet_id": 2}, calls31["publish"]),
                 E("UNSUBSCRIBE", {"packet_id": 3,
                                   "filters": ["brokk/paho31/a", "brokk/paho31/b/#"]},
                   calls31["unsubscribe"]),
                 E("PINGREQ", {}, calls31["ping"]),
                 E("DISCONNECT", {}, calls31["disconnect"], write=False),
             ])

    # ---------------------------------------------------------------- v3.1.1
    calls311 = {
        "connect": "Client(CallbackAPIVersion.VERSION2, client_id='paho-v311', protocol=MQTTv311, "
                   "clean_session=False); username_pw_set('paho-user', 'paho-pass'); "
                   "will_set('brokk/will/paho', 'paho gone', qos=2, retain=True); "
                   "connect('127.0.0.1', PORT, keepalive=2)",
        "subscribe": "subscribe('brokk/paho/#', qos=2)",
        "pushed": "(fake broker pushed PUBLISH qos1 id 0x1001 and qos2 id 0x1002; library ack)",
        "q0": "publish('brokk/paho/q0', 'zero', qos=0, retain=True)",
        "q1": "publish('brokk/paho/q1', '', qos=1)",
        "unsubscribe": "unsubscribe('brokk/paho/#')",
        "ping": "(idle for keepalive=2 s: library PINGREQ)",
        "disconnect": "disconnect()",
    }

    def drive311(port, broker):
        c = client("paho-v311", mqtt.MQTTv311, clean_session=False)
        c.username_pw_set("paho-user", "paho-pass")
        c.will_set("brokk/will/paho", "paho gone", qos=2, retain=True)
        c.connect(HOST, port, keepalive=2)
        c.loop_start()
        try:
            c.subscribe("brokk/paho/#", qos=2)
            broker.wait_for(PUBCOMP)
            i0 = c.publish("brokk/paho/q0", "zero", qos=0, retain=True)
            i1 = c.publish("brokk/paho/q1", "", qos=1)
            finish(c, broker, [i0, i1])
            c.unsubscribe("brokk/paho/#")
            broker.wait_for(UNSUBSCRIBE)
            broker.wait_for(PINGREQ, timeout=8)
            c.disconnect()
        finally:
            c.loop_stop()

    run_fake(g, source="paho", proto="v311", driver=drive311, push=PUSH,
             command="paho-mqtt v3.1.1 session",
             expected=[
                 E("CONNECT", {"protocol_name": "MQTT", "protocol_level": 4,
                               "client_id": "paho-v311", "keep_alive": 2, "clean_start": False,
                               "will": {"topic": "brokk/will/paho", "payload": "paho gone",
                                        "qos": 2, "retain": True},
                               "username": "paho-user", "password": "paho-pass"},
                   calls311["connect"]),
                 E("SUBSCRIBE", {"packet_id": 1, "filters": [{"filter": "brokk/paho/#", "qos": 2}]},
                   calls311["subscribe"]),
                 *[E(t, ack_expect("v311", pid), calls311["pushed"]) for t, pid in ACKS_FOR_PUSH],
                 E("PUBLISH", {"topic": "brokk/paho/q0", "qos": 0, "retain": True, "dup": False,
                               "payload": "zero"}, calls311["q0"]),
                 E("PUBLISH", {"topic": "brokk/paho/q1", "qos": 1, "retain": False, "dup": False,
                               "packet_id": 3, "payload": ""}, calls311["q1"]),
                 E("UNSUBSCRIBE", {"packet_id": 4, "filters": ["brokk/paho/#"]},
                   calls311["unsubscribe"]),
                 E("PINGREQ", {}, calls311["ping"], write=False),
                 E("DISCONNECT", {}, calls311["disconnect"]),
             ])

    # ---------------------------------------------------------------- v5
    calls5 = {
        "connect": "Client(CallbackAPIVersion.VERSION2, client_id='paho-v5', protocol=MQTTv5); "
                   "will_set('brokk/will/paho5', 'paho5 gone', qos=1, retain=False, properties="
                   "{WillDelayInterval=5, MessageExpiryInterval=300, ContentType='text/plain', "
                   "UserProperty=[('wk','wv')]}); connect('127.0.0.1', PORT, keepalive=2, "
                   "clean_start=True, properties={SessionExpiryInterval=120, ReceiveMaximum=32, "
                   "MaximumPacketSize=262144, TopicAliasMaximum=8, RequestResponseInformation=1, "
                   "RequestProblemInformation=1, UserProperty=[('client','paho'),('lang','python')]})",
        "subscribe": "subscribe([('brokk/paho5/a', SubscribeOptions(qos=0, noLocal=True)), "
                     "('brokk/paho5/b/+', SubscribeOptions(qos=1, retainAsPublished=True, "
                     "retainHandling=RETAIN_SEND_IF_NEW_SUB)), ('brokk/paho5/#', "
                     "SubscribeOptions(qos=2, retainHandling=RETAIN_DO_NOT_SEND))], "
                     "properties={SubscriptionIdentifier=42, UserProperty=[('sub','1')]})",
        "pushed": "(fake broker pushed PUBLISH qos1 id 0x1001 and qos2 id 0x1002; library ack)",
        "q0": "publish('brokk/paho5/q0', b'', qos=0)",
        "q1": "publish('brokk/paho5/props', '{\"n\":1}', qos=1, retain=True, properties="
              "{PayloadFormatIndicator=1, MessageExpiryInterval=90, ContentType='application/json', "
              "ResponseTopic='brokk/paho5/reply', CorrelationData=b'\\x01\\x02\\x03', "
              "UserProperty=[('a','1'),('a','2'),('b','3')]})",
        "q2": "publish('brokk/paho5/q2', 'two', qos=2)",
        "unsubscribe": "unsubscribe(['brokk/paho5/a', 'brokk/paho5/#'], properties="
                       "{UserProperty=[('why','done')]})",
        "ping": "(idle for keepalive=2 s: library PINGREQ)",
        "disconnect": "disconnect(reasoncode=ReasonCode(DISCONNECT, 'Disconnect with will message'), "
                      "properties={SessionExpiryInterval=0, ReasonString='bye from paho', "
                      "UserProperty=[('dk','dv')]})",
    }

    def drive5(port, broker):
        c = client("paho-v5", mqtt.MQTTv5)
        wp = Properties(PacketTypes.WILLMESSAGE)
        wp.WillDelayInterval = 5
        wp.MessageExpiryInterval = 300
        wp.ContentType = "text/plain"
        wp.UserProperty = [("wk", "wv")]
        c.will_set("brokk/will/paho5", "paho5 gone", qos=1, retain=False, properties=wp)
        cp = Properties(PacketTypes.CONNECT)
        cp.SessionExpiryInterval = 120
        cp.ReceiveMaximum = 32
        cp.MaximumPacketSize = 262144
        cp.TopicAliasMaximum = 8
        cp.RequestResponseInformation = 1
        cp.RequestProblemInformation = 1
        cp.UserProperty = [("client", "paho"), ("lang", "python")]
        c.connect(HOST, port, keepalive=2, clean_start=True, properties=cp)
        c.loop_start()
        try:
            sp = Properties(PacketTypes.SUBSCRIBE)
            sp.SubscriptionIdentifier = 42
            sp.UserProperty = [("sub", "1")]
            c.subscribe([
                ("brokk/paho5/a", SubscribeOptions(qos=0, noLocal=True)),
                ("brokk/paho5/b/+", SubscribeOptions(
                    qos=1, retainAsPublished=True,
                    retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)),
                ("brokk/paho5/#", SubscribeOptions(
                    qos=2, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)),
            ], properties=sp)
            broker.wait_for(PUBCOMP)
            i0 = c.publish("brokk/paho5/q0", b"", qos=0)
            pp = Properties(PacketTypes.PUBLISH)
            pp.PayloadFormatIndicator = 1
            pp.MessageExpiryInterval = 90
            pp.ContentType = "application/json"
            pp.ResponseTopic = "brokk/paho5/reply"
            pp.CorrelationData = b"\x01\x02\x03"
            pp.UserProperty = [("a", "1"), ("a", "2"), ("b", "3")]
            i1 = c.publish("brokk/paho5/props", '{"n":1}', qos=1, retain=True, properties=pp)
            i2 = c.publish("brokk/paho5/q2", "two", qos=2)
            finish(c, broker, [i0, i1, i2])
            up = Properties(PacketTypes.UNSUBSCRIBE)
            up.UserProperty = [("why", "done")]
            c.unsubscribe(["brokk/paho5/a", "brokk/paho5/#"], properties=up)
            broker.wait_for(UNSUBSCRIBE)
            broker.wait_for(PINGREQ, timeout=8)
            dp = Properties(PacketTypes.DISCONNECT)
            dp.SessionExpiryInterval = 0
            dp.ReasonString = "bye from paho"
            dp.UserProperty = [("dk", "dv")]
            c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT,
                                               "Disconnect with will message"),
                         properties=dp)
        finally:
            c.loop_stop()

    run_fake(g, source="paho", proto="v5", driver=drive5, push=PUSH,
             command="paho-mqtt v5 session",
             expected=[
                 E("CONNECT", {"protocol_name": "MQTT", "protocol_level": 5,
                               "client_id": "paho-v5", "keep_alive": 2, "clean_start": True,
                               "username": None, "password": None,
                               "properties": {"session_expiry_interval": 120,
                                              "receive_maximum": 32,
                                              "maximum_packet_size": 262144,
                                              "topic_alias_maximum": 8,
                                              "request_response_information": 1,
                                              "request_problem_information": 1,
                                              "user_properties": [["client", "paho"],
                                                                  ["lang", "python"]]},
                               "will": {"topic": "brokk/will/paho5", "payload": "paho5 gone",
                                        "qos": 1, "retain": False,
                                        "properties": {"will_delay_interval": 5,
                                                       "message_expiry_interval": 300,
                                                       "content_type": "text/plain",
                                                       "user_properties": [["wk", "wv"]]}}},
                   calls5["connect"]),
                 E("SUBSCRIBE", {"packet_id": 1,
                                 "properties": {"subscription_identifier": 42,
                                                "user_properties": [["sub", "1"]]},
                                 "filters": [
                                     {"filter": "brokk/paho5/a", "qos": 0, "no_local": True,
                                      "retain_as_published": False, "retain_handling": 0},
                                     {"filter": "brokk/paho5/b/+", "qos": 1, "no_local": False,
                                      "retain_as_published": True, "retain_handling": 1},
                                     {"filter": "brokk/paho5/#", "qos": 2, "no_local": False,
                                      "retain_as_published": False, "retain_handling": 2}]},
                   calls5["subscribe"]),
                 *[E(t, ack_expect("v5", pid), calls5["pushed"]) for t, pid in ACKS_FOR_PUSH],
                 E("PUBLISH", {"topic": "brokk/paho5/q0", "qos": 0, "retain": False,
                               "dup": False, "payload": "", "properties": {}}, calls5["q0"]),
                 E("PUBLISH", {"topic": "brokk/paho5/props", "qos": 1, "retain": True,
                               "dup": False, "packet_id": 3, "payload": '{"n":1}',
                               "properties": {"payload_format_indicator": 1,
                                              "message_expiry_interval": 90,
                                              "content_type": "application/json",
                                              "response_topic": "brokk/paho5/reply",
                                              "correlation_data_hex": "010203",
                                              "user_properties": [["a", "1"], ["a", "2"],
                                                                  ["b", "3"]]}},
                   calls5["q1"]),
                 E("PUBLISH", {"topic": "brokk/paho5/q2", "qos": 2, "retain": False,
                               "dup": False, "packet_id": 4, "payload": "two",
                               "properties": {}}, calls5["q2"]),
                 E("PUBREL", ack_expect("v5", 4), calls5["q2"]),
                 E("UNSUBSCRIBE", {"packet_id": 5,
                                   "properties": {"user_properties": [["why", "done"]]},
                                   "filters": ["brokk/paho5/a", "brokk/paho5/#"]},
                   calls5["unsubscribe"]),
                 E("PINGREQ", {}, calls5["ping"]),
                 E("DISCONNECT", {"reason_code": 0x04,
                                  "properties": {"session_expiry_interval": 0,
                                                 "reason_string": "bye from paho",
                                                 "user_properties": [["dk", "dv"]]}},
                   calls5["disconnect"]),
             ])


def mqttjs_scenarios(g: Golden) -> None:
    script = "tests/clients/js/capture.js"

    def go(scn, proto, expected, **kw):
        argv = ["node", str(JS_DIR / "capture.js"), scn, "{port}"]
        base = f"node {script} {scn} PORT"
        for e in expected:
            e["command"] = f"{base} :: {e['command']}" if e["command"] else base
        run_fake(g, source="mqttjs", proto=proto, driver=cli_driver(argv, cwd=JS_DIR),
                 expected=expected, command=base, **kw)

    go("v31", "v31", [
        E("CONNECT", {"protocol_name": "MQIsdp", "protocol_level": 3, "client_id": "mqttjs-v31",
                      "keep_alive": 25, "clean_start": True, "will": None,
                      "username": None, "password": None},
          "mqtt.connect({protocolId:'MQIsdp', protocolVersion:3, clientId:'mqttjs-v31', "
          "keepalive:25, clean:true})"),
        E("SUBSCRIBE", {"packet_id": 1, "filters": [{"filter": "brokk/js/v31/#", "qos": 1}]},
          "subscribeAsync('brokk/js/v31/#', {qos:1})"),
        E("PUBLISH", {"topic": "brokk/js/v31", "qos": 1, "retain": False, "dup": False,
                      "packet_id": 2, "payload": "hello from mqtt.js v3.1"},
          "publishAsync('brokk/js/v31', 'hello from mqtt.js v3.1', {qos:1})"),
        E("DISCONNECT", {}, "endAsync()", write=False),
    ])

    pushed = "(fake broker pushed PUBLISH qos1 id 0x1001 and qos2 id 0x1002; library ack)"
    go("v311", "v311", [
        E("CONNECT", {"protocol_name": "MQTT", "protocol_level": 4, "client_id": "mqttjs-v311",
                      "keep_alive": 1, "clean_start": True, "username": "js-user",
                      "password": "js-pass",
                      "will": {"topic": "brokk/js/will", "payload": "js-gone", "qos": 2,
                               "retain": True}},
          "mqtt.connect({protocolVersion:4, clientId:'mqttjs-v311', keepalive:1, clean:true, "
          "username:'js-user', password:'js-pass', will:{topic:'brokk/js/will', "
          "payload:'js-gone', qos:2, retain:true}})"),
        E("SUBSCRIBE", {"packet_id": 1, "filters": [{"filter": "brokk/js/a", "qos": 0},
                                                    {"filter": "brokk/js/b/+", "qos": 1},
                                                    {"filter": "brokk/js/c/#", "qos": 2}]},
          "subscribeAsync({'brokk/js/a':{qos:0}, 'brokk/js/b/+':{qos:1}, 'brokk/js/c/#':{qos:2}})"),
        *[E(t, ack_expect("v311", pid), pushed) for t, pid in ACKS_FOR_PUSH],
        E("PUBLISH", {"topic": "brokk/js/q0", "qos": 0, "retain": False, "dup": False,
                      "payload": "zero"}, "publishAsync('brokk/js/q0', 'zero', {qos:0})",
          write=False),
        E("PUBLISH", {"topic": "brokk/js/q1", "qos": 1, "retain": False, "dup": False,
                      "packet_id": 2, "payload": "one"},
          "publishAsync('brokk/js/q1', 'one', {qos:1})"),
        E("PUBLISH", {"topic": "brokk/js/q2", "qos": 2, "retain": True, "dup": False,
                      "packet_id": 3, "payload": "two"},
          "publishAsync('brokk/js/q2', 'two', {qos:2, retain:true})"),
        E("PUBREL", {"packet_id": 3}, "publishAsync('brokk/js/q2', 'two', {qos:2, retain:true})"),
        E("UNSUBSCRIBE", {"packet_id": 4, "filters": ["brokk/js/a", "brokk/js/b/+"]},
          "unsubscribeAsync(['brokk/js/a', 'brokk/js/b/+'])"),
        E("PINGREQ", {}, "(idle for keepalive=1 s: library PINGREQ)"),
        E("DISCONNECT", {}, "endAsync()"),
    ], push=PUSH)

    go("v5", "v5", [
        E("CONNECT", {"protocol_name": "MQTT", "protocol_level": 5, "client_id": "mqttjs-v5",
                      "keep_alive": 30, "clean_start": True, "username": None, "password": None,
                      "properties": {"session_expiry_interval": 300, "receive_maximum": 50,
                                     "maximum_packet_size": 1048576, "topic_alias_maximum": 4,
                                     "request_response_information": 1,
                                     "request_problem_information": 0,
                                     "user_properties": [["lib", "mqtt.js"], ["flavour", "v5"]]},
                      "will": {"topic": "brokk/js5/will", "payload": "js5-gone", "qos": 1,
                               "retain": False,
                               "properties": {"will_delay_interval": 10,
                                              "payload_format_indicator": 1,
                                              "message_expiry_interval": 30,
                                              "content_type": "text/plain",
                                              "response_topic": "brokk/js5/will-reply",
                                              "correlation_data": "will-corr",
                                              "user_properties": [["w", "1"]]}}},
          "mqtt.connect({protocolVersion:5, clientId:'mqttjs-v5', keepalive:30, clean:true, "
          "properties:{sessionExpiryInterval:300, receiveMaximum:50, maximumPacketSize:1048576, "
          "topicAliasMaximum:4, requestResponseInformation:true, requestProblemInformation:false, "
          "userProperties:{lib:'mqtt.js', flavour:'v5'}}, will:{topic:'brokk/js5/will', "
          "payload:'js5-gone', qos:1, retain:false, properties:{willDelayInterval:10, "
          "payloadFormatIndicator:true, messageExpiryInterval:30, contentType:'text/plain', "
          "responseTopic:'brokk/js5/will-reply', correlationData:Buffer.from('will-corr'), "
          "userProperties:{w:'1'}}}})"),
        E("SUBSCRIBE", {"packet_id": 1,
                        "properties": {"subscription_identifier": 99,
                                       "user_properties": [["s", "1"]]},
                        "filters": [
                            {"filter": "brokk/js5/a", "qos": 0, "no_local": True,
                             "retain_as_published": False, "retain_handling": 0},
                            {"filter": "brokk/js5/b", "qos": 1, "no_local": False,
                             "retain_as_published": True, "retain_handling": 1},
                            {"filter": "brokk/js5/c/#", "qos": 2, "no_local": False,
                             "retain_as_published": False, "retain_handling": 2}]},
          "subscribeAsync({'brokk/js5/a':{qos:0, nl:true, rap:false, rh:0}, "
          "'brokk/js5/b':{qos:1, nl:false, rap:true, rh:1}, "
          "'brokk/js5/c/#':{qos:2, nl:false, rap:false, rh:2}}, "
          "{properties:{subscriptionIdentifier:99, userProperties:{s:'1'}}})"),
        *[E(t, ack_expect("v5", pid), pushed) for t, pid in ACKS_FOR_PUSH],
        E("PUBLISH", {"topic": "brokk/js5/props", "qos": 1, "retain": False, "dup": False,
                      "packet_id": 2, "payload": '{"js":true}',
                      "properties": {"payload_format_indicator": 1,
                                     "message_expiry_interval": 120,
                                     "content_type": "application/json",
                                     "response_topic": "brokk/js5/reply",
                                     "correlation_data": "js-corr",
                                     "user_properties": [["a", "1"], ["b", "2"], ["b", "3"]]}},
          "publishAsync('brokk/js5/props', '{\"js\":true}', {qos:1, properties:"
          "{payloadFormatIndicator:true, messageExpiryInterval:120, contentType:'application/json', "
          "responseTopic:'brokk/js5/reply', correlationData:Buffer.from('js-corr'), "
          "userProperties:{a:'1', b:['2','3']}}})"),
        E("PUBLISH", {"topic": "brokk/js5/q2", "qos": 2, "retain": False, "dup": False,
                      "packet_id": 3, "payload": "two", "properties": {}},
          "publishAsync('brokk/js5/q2', 'two', {qos:2})"),
        E("PUBREL", ack_expect("v5", 3), "publishAsync('brokk/js5/q2', 'two', {qos:2})"),
        E("UNSUBSCRIBE", {"packet_id": 4, "properties": {"user_properties": [["u", "x"]]},
                          "filters": ["brokk/js5/a"]},
          "unsubscribeAsync(['brokk/js5/a'], {properties:{userProperties:{u:'x'}}})"),
        E("DISCONNECT", {"reason_code": 0x04,
                         "properties": {"session_expiry_interval": 0,
                                        "reason_string": "bye from mqtt.js",
                                        "user_properties": [["d", "1"]]}},
          "endAsync({reasonCode:0x04, properties:{sessionExpiryInterval:0, "
          "reasonString:'bye from mqtt.js', userProperties:{d:'1'}}})"),
    ], push=PUSH)

    go("v5-auth", "v5", [
        E("CONNECT", {"protocol_name": "MQTT", "protocol_level": 5,
                      "client_id": "mqttjs-v5-auth", "keep_alive": 30, "clean_start": True,
                      "will": None, "username": None, "password": None,
                      "properties": {"authentication_method": "BROKK-TEST",
                                     "authentication_data": "client-first"}},
          "mqtt.connect({protocolVersion:5, clientId:'mqttjs-v5-auth', keepalive:30, clean:true, "
          "properties:{authenticationMethod:'BROKK-TEST', "
          "authenticationData:Buffer.from('client-first')}})"),
        E("AUTH", {"reason_code": 0x18,
                   "properties": {"authentication_method": "BROKK-TEST",
                                  "authentication_data": "client-final"}},
          "(fake broker sent AUTH 0x18) handleAuth -> cb(null, {cmd:'auth', reasonCode:0x18, "
          "properties:{authenticationMethod:'BROKK-TEST', "
          "authenticationData:Buffer.from('client-final')}})"),
        E("DISCONNECT", {"reason_code": 0, "properties": {}}, "endAsync()", write=False),
    ])


# =========================================================================
# Server -> client: the real mosquitto broker
# =========================================================================

MOSQ_MAX_INFLIGHT = 20
MOSQ_MAX_TOPIC_ALIAS = 10
MOSQ_MAX_KEEPALIVE = 60
DYNSEC_PLUGIN = (glob.glob("/usr/lib/*/mosquitto_dynamic_security.so")
                 + ["/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"])[0]


class Mosquitto:
    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="brokk-golden-mosq-"))
        os.chmod(self.tmp, 0o755)  # mosquitto may drop root privileges
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        # Dynamic-security plugin (ships with Debian's mosquitto): anonymous
        # clients may publish/subscribe below brokk/ only. Unlike acl_file
        # (checked at delivery time), dynsec refuses SUBSCRIBE up front, which
        # is how the SUBACK failure codes are provoked.
        dynsec = self.tmp / "dynamic-security.json"
        dynsec.write_text(json.dumps({
            "clients": [],
            "groups": [{"groupname": "anonymous", "roles": [{"rolename": "golden"}]}],
            "roles": [{"rolename": "golden", "acls": [
                {"acltype": "publishClientSend", "topic": "brokk/#", "allow": True},
                {"acltype": "subscribePattern", "topic": "brokk/#", "allow": True},
            ]}],
            "anonymousGroup": "anonymous",
            "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True,
                                 "subscribe": False, "unsubscribe": True},
        }, indent=1))
        conf = self.tmp / "mosquitto.conf"
        conf.write_text(
            f"per_listener_settings false\n"
            f"allow_anonymous true\n"
            f"plugin {DYNSEC_PLUGIN}\n"
            f"plugin_opt_config_file {dynsec}\n"
            f"max_inflight_messages {MOSQ_MAX_INFLIGHT}\n"
            f"max_keepalive {MOSQ_MAX_KEEPALIVE}\n"
            f"persistence false\n"
            f"log_dest stderr\n"
            f"log_type all\n"
            f"listener {self.port} {HOST}\n"
            f"max_topic_alias {MOSQ_MAX_TOPIC_ALIAS}\n")
        for p in (dynsec, conf):
            os.chmod(p, 0o644)
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.logf = open(self.tmp / "mosquitto.log", "wb")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("mosquitto did not start:\n" + self.log())
                time.sleep(0.05)

    def log(self) -> str:
        self.logf.flush()
        return (self.tmp / "mosquitto.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class RawClient:
    """A hand-encoding MQTT client on a plain socket."""

    def __init__(self, port: int, name: str, level: int):
        self.name, self.level = name, level
        self.sock = socket.create_connection((HOST, port), timeout=5)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, ptype: int, timeout: float = 5) -> bytes:
        self.sock.settimeout(timeout)
        try:
            raw = read_packet(self.sock)
        except socket.timeout:
            raise TimeoutError(f"{self.name}: no packet within {timeout}s, "
                               f"wanted {TYPE_NAMES[ptype]}") from None
        if raw is None:
            raise EOFError(f"{self.name}: connection closed, wanted {TYPE_NAMES[ptype]}")
        if raw[0] >> 4 != ptype:
            raise RuntimeError(f"{self.name}: wanted {TYPE_NAMES[ptype]}, got "
                               f"{TYPE_NAMES[raw[0] >> 4]} {raw.hex()}")
        return raw

    def expect_closed(self, timeout: float = 5) -> None:
        self.sock.settimeout(timeout)
        data = self.sock.recv(1)
        if data:
            raise RuntimeError(f"{self.name}: expected close, got more data {data.hex()}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def broker_scenarios(g: Golden) -> None:
    m = Mosquitto()
    try:
        _broker_v311(g, m)
        _broker_v31(g, m)
        _broker_v5(g, m)
    except Exception as e:  # noqa: BLE001
        g.errors.append(f"mosquitto-broker: {e!r}\n--- mosquitto log ---\n{m.log()[-4000:]}")
    finally:
        m.stop()


def _brec(g: Golden, proto: str, raw: bytes, ptype: str, command: str, expect: dict,
          write: bool = True, note: str | None = None) -> None:
    g.add(source="mosquitto-broker", proto=proto, raw=raw, packet_type=ptype,
          direction="server-to-client", command=command, expect=expect, write=write, note=note)


def _wait_second_start() -> None:
    """Sleep until just after a wall-clock second boundary, so a message
    expiry interval forwarded by mosquitto (which it recomputes in whole
    seconds) is not decremented by a boundary crossing."""
    frac = time.time() % 1.0
    if frac > 0.05:
        time.sleep(1.0 - frac + 0.02)


def _broker_v311(g: Golden, m: Mosquitto) -> None:
    P = "v311"
    a = RawClient(m.port, "A311", 4)
    b = RawClient(m.port, "B311", 4)
    try:
        a.send(enc_connect(4, "golden-a311", keep_alive=30, clean=True))
        _brec(g, P, a.recv(CONNACK), "CONNACK",
              "raw client sent CONNECT v3.1.1 client_id='golden-a311' clean_session=1 keep_alive=30",
              {"session_present": False, "reason_code": 0})
        b.send(enc_connect(4, "golden-b311", keep_alive=30, clean=True))
        b.recv(CONNACK)

        a.send(enc_subscribe(4, 1, [("brokk/golden/q0", 0), ("brokk/golden/q1", 1),
                                    ("brokk/golden/q2", 2), ("forbidden/topic", 1)]))
        _brec(g, P, a.recv(SUBACK), "SUBACK",
              "SUBSCRIBE id=1 [brokk/golden/q0 q0, brokk/golden/q1 q1, brokk/golden/q2 q2, "
              "forbidden/topic q1] (dynsec: anonymous may subscribe to brokk/# only)",
              {"packet_id": 1, "reason_codes": [0x00, 0x01, 0x02, 0x80]})

        # Publisher B: QoS 0, 1, 2 (retain set on the QoS 2 one).
        b.send(enc_publish(4, "brokk/golden/q0", "zero", qos=0))
        b.send(enc_publish(4, "brokk/golden/q1", "one", qos=1, pid=10))
        _brec(g, P, b.recv(PUBACK), "PUBACK", "publisher sent PUBLISH qos=1 id=10",
              {"packet_id": 10})
        b.send(enc_publish(4, "brokk/golden/q2", "two", qos=2, pid=11, retain=True))
        _brec(g, P, b.recv(PUBREC), "PUBREC", "publisher sent PUBLISH qos=2 id=11",
              {"packet_id": 11})
        b.send(enc_ack(PUBREL, 11))
        _brec(g, P, b.recv(PUBCOMP), "PUBCOMP", "publisher sent PUBREL id=11",
              {"packet_id": 11})

        # Subscriber A receives them; mosquitto numbers its outgoing ids from 1.
        _brec(g, P, a.recv(PUBLISH), "PUBLISH",
              "forwarded to subscriber (sub qos 0) from PUBLISH qos=0 brokk/golden/q0 'zero'",
              {"topic": "brokk/golden/q0", "qos": 0, "retain": False, "dup": False,
               "payload": "zero"})
        raw = a.recv(PUBLISH)
        _brec(g, P, raw, "PUBLISH",
              "forwarded to subscriber (sub qos 1) from PUBLISH qos=1 brokk/golden/q1 'one'",
              {"topic": "brokk/golden/q1", "qos": 1, "retain": False, "dup": False,
               "packet_id": 1, "payload": "one"})
        a.send(enc_ack(PUBACK, 1))
        _brec(g, P, a.recv(PUBLISH), "PUBLISH",
              "forwarded to subscriber (sub qos 2) from PUBLISH qos=2 retain=1 brokk/golden/q2 "
              "'two' (live delivery: RETAIN cleared, MQTT-3.3.1-9)",
              {"topic": "brokk/golden/q2", "qos": 2, "retain": False, "dup": False,
               "packet_id": 2, "payload": "two"})
        a.send(enc_ack(PUBREC, 2))
        _brec(g, P, a.recv(PUBREL), "PUBREL", "subscriber sent PUBREC id=2",
              {"packet_id": 2})
        a.send(enc_ack(PUBCOMP, 2))

        # Retained message delivered because of a new subscription.
        a.send(enc_subscribe(4, 2, [("brokk/golden/q2", 1)]))
        _brec(g, P, a.recv(SUBACK), "SUBACK",
              "SUBSCRIBE id=2 [brokk/golden/q2 q1] (re-subscribe, replaces the q2 subscription)",
              {"packet_id": 2, "reason_codes": [0x01]}, write=False)
        _brec(g, P, a.recv(PUBLISH), "PUBLISH",
              "retained message 'two' (published qos 2 retain=1) delivered on new "
              "subscription brokk/golden/q2 at qos 1",
              {"topic": "brokk/golden/q2", "qos": 1, "retain": True, "dup": False,
               "packet_id": 3, "payload": "two"})
        a.send(enc_ack(PUBACK, 3))

        a.send(enc_unsubscribe(4, 3, ["brokk/golden/q0", "brokk/golden/q2"]))
        _brec(g, P, a.recv(UNSUBACK), "UNSUBACK",
              "UNSUBSCRIBE id=3 [brokk/golden/q0, brokk/golden/q2]", {"packet_id": 3})
        a.send(PINGREQ_BYTES)
        _brec(g, P, a.recv(PINGRESP), "PINGRESP", "PINGREQ", {})

        # Clear the retained message again.
        b.send(enc_publish(4, "brokk/golden/q2", "", qos=0, retain=True))
        for c in (a, b):
            c.send(enc_disconnect(4))

        # Refused: zero-length client id with clean_session=0 (MQTT-3.1.3-8).
        r = RawClient(m.port, "R311", 4)
        try:
            r.send(enc_connect(4, "", keep_alive=30, clean=False))
            _brec(g, P, r.recv(CONNACK), "CONNACK",
                  "raw client sent CONNECT v3.1.1 client_id='' clean_session=0",
                  {"session_present": False, "reason_code": 0x02})
        finally:
            r.close()
    finally:
        a.close()
        b.close()


def _broker_v31(g: Golden, m: Mosquitto) -> None:
    P = "v31"
    a = RawClient(m.port, "A31", 3)
    b = RawClient(m.port, "B31", 3)
    try:
        a.send(enc_connect(3, "golden-a31", keep_alive=30, clean=True))
        _brec(g, P, a.recv(CONNACK), "CONNACK",
              "raw client sent CONNECT v3.1 (MQIsdp) client_id='golden-a31' clean_session=1",
              {"session_present": False, "reason_code": 0})
        b.send(enc_connect(3, "golden-b31", keep_alive=30, clean=True))
        b.recv(CONNACK)
        a.send(enc_subscribe(3, 7, [("brokk/golden31/#", 2)]))
        _brec(g, P, a.recv(SUBACK), "SUBACK", "SUBSCRIBE id=7 [brokk/golden31/# q2]",
              {"packet_id": 7, "reason_codes": [0x02]})
        b.send(enc_publish(3, "brokk/golden31/x", "v3.1 payload", qos=1, pid=1))
        b.recv(PUBACK)
        _brec(g, P, a.recv(PUBLISH), "PUBLISH",
              "forwarded to subscriber (sub qos 2) from v3.1 PUBLISH qos=1 brokk/golden31/x "
              "'v3.1 payload'",
              {"topic": "brokk/golden31/x", "qos": 1, "retain": False, "dup": False,
               "packet_id": 1, "payload": "v3.1 payload"})
        a.send(enc_ack(PUBACK, 1))
        a.send(enc_unsubscribe(3, 8, ["brokk/golden31/#"]))
        _brec(g, P, a.recv(UNSUBACK), "UNSUBACK", "UNSUBSCRIBE id=8 [brokk/golden31/#]",
              {"packet_id": 8})
        a.send(PINGREQ_BYTES)
        _brec(g, P, a.recv(PINGRESP), "PINGRESP", "PINGREQ", {})
        for c in (a, b):
            c.send(enc_disconnect(3))
    finally:
        a.close()
        b.close()


def _broker_v5(g: Golden, m: Mosquitto) -> None:
    P = "v5"
    default_connack_props = {"receive_maximum": MOSQ_MAX_INFLIGHT,
                             "topic_alias_maximum": MOSQ_MAX_TOPIC_ALIAS}
    a = RawClient(m.port, "A5", 5)
    b = RawClient(m.port, "B5", 5)
    try:
        a.send(enc_connect(5, "golden-a5", keep_alive=30, clean=True,
                           props=[("session_expiry_interval", 300)]))
        _brec(g, P, a.recv(CONNACK), "CONNACK",
              "raw client sent CONNECT v5 client_id='golden-a5' clean_start=1 keep_alive=30 "
              "{session_expiry_interval=300}; mosquitto.conf: max_inflight_messages "
              f"{MOSQ_MAX_INFLIGHT}, max_topic_alias {MOSQ_MAX_TOPIC_ALIAS}",
              {"session_present": False, "reason_code": 0, "properties": default_connack_props})
        b.send(enc_connect(5, "golden-b5", keep_alive=30, clean=True))
        b.recv(CONNACK)

        # Assigned client id + server keep alive.
        c = RawClient(m.port, "C5", 5)
        try:
            c.send(enc_connect(5, "", keep_alive=120, clean=True))
            _brec(g, P, c.recv(CONNACK), "CONNACK",
                  "raw client sent CONNECT v5 client_id='' keep_alive=120; mosquitto.conf: "
                  f"max_keepalive {MOSQ_MAX_KEEPALIVE}",
                  {"session_present": False, "reason_code": 0,
                   "properties": dict(default_connack_props,
                                      assigned_client_identifier=ANY,
                                      server_keep_alive=MOSQ_MAX_KEEPALIVE)},
                  note="assigned_client_identifier is random (mosquitto: 'auto-' + UUID)")
            c.send(enc_disconnect(5))
        finally:
            c.close()

        # Refused: enhanced auth with a method mosquitto has no plugin for.
        c = RawClient(m.port, "D5", 5)
        try:
            c.send(enc_connect(5, "golden-d5", keep_alive=30, clean=True,
                               props=[("authentication_method", "SCRAM-SHA-1"),
                                      ("authentication_data", "n,,n=user,r=abc")]))
            _brec(g, P, c.recv(CONNACK), "CONNACK",
                  "raw client sent CONNECT v5 {authentication_method='SCRAM-SHA-1', "
                  "authentication_data='n,,n=user,r=abc'} (no auth plugin loaded)",
                  {"session_present": False, "reason_code": 0x8C, "properties": {}})
        finally:
            c.close()

        a.send(enc_subscribe(5, 1, [
            ("brokk/v5/q0", sub_opts(0)),
            ("brokk/v5/q1", sub_opts(1, nl=True)),
            ("brokk/v5/q2", sub_opts(2, rap=True)),
            ("forbidden/v5", sub_opts(1)),
        ], props=[("subscription_identifier", 7), ("user_property", ("sk", "sv"))]))
        _brec(g, P, a.recv(SUBACK), "SUBACK",
              "SUBSCRIBE id=1 {subscription_identifier=7, user_property=(sk,sv)} "
              "[brokk/v5/q0 q0, brokk/v5/q1 q1 no_local, brokk/v5/q2 q2 retain_as_published, "
              "forbidden/v5 q1] (dynsec: anonymous may subscribe to brokk/# only)",
              {"packet_id": 1, "properties": {}, "reason_codes": [0x00, 0x01, 0x02, 0x87]})

        # B publishes QoS 0 with every forwardable property.
        pub_props = [("payload_format_indicator", 1), ("message_expiry_interval", 3600),
                     ("content_type", "text/plain"), ("response_topic", "brokk/v5/reply"),
                     ("correlation_data", b"\x00corr\xff"),
                     ("user_property", ("k1", "v1")), ("user_property", ("k1", "v2"))]
        _wait_second_start()
        b.send(enc_publish(5, "brokk/v5/q0", "hello v5", qos=0, props=pub_props))
        _brec(g, P, a.recv(PUBLISH), "PUBLISH",
              "forwarded to subscriber (sub qos 0, subscription_identifier 7) from PUBLISH qos=0 "
              "brokk/v5/q0 'hello v5' {payload_format_indicator=1, message_expiry_interval=3600, "
              "content_type='text/plain', response_topic='brokk/v5/reply', "
              "correlation_data=00636f7272ff, user_property=(k1,v1), user_property=(k1,v2)}",
              {"topic": "brokk/v5/q0", "qos": 0, "retain": False, "dup": False,
               "payload": "hello v5",
               "properties": {"payload_format_indicator": 1, "message_expiry_interval": 3600,
                              "content_type": "text/plain", "response_topic": "brokk/v5/reply",
                              "correlation_data_hex": "00636f7272ff",
                              "user_properties": [["k1", "v1"], ["k1", "v2"]],
                              "subscription_identifiers": [7]}},
              note="message_expiry_interval is the remaining lifetime, recomputed by mosquitto "
                   "in whole seconds at send time")

        b.send(enc_publish(5, "brokk/v5/q1", "one", qos=1, pid=20))
        _brec(g, P, b.recv(PUBACK), "PUBACK", "publisher sent PUBLISH qos=1 id=20 (one subscriber)",
              {"packet_id": 20, "reason_code": 0, "properties": {}})
        raw = a.recv(PUBLISH)
        _brec(g, P, raw, "PUBLISH", "forwarded from PUBLISH qos=1 brokk/v5/q1 'one'",
              {"topic": "brokk/v5/q1", "qos": 1, "retain": False, "dup": False, "packet_id": 1,
               "payload": "one", "properties": {"subscription_identifiers": [7]}})
        a.send(enc_ack(PUBACK, 1, 5))

        b.send(enc_publish(5, "brokk/v5/q2", "two", qos=2, pid=21, retain=True))
        _brec(g, P, b.recv(PUBREC), "PUBREC", "publisher sent PUBLISH qos=2 retain=1 id=21",
              {"packet_id": 21, "reason_code": 0, "properties": {}})
        b.send(enc_ack(PUBREL, 21, 5))
        _brec(g, P, b.recv(PUBCOMP), "PUBCOMP", "publisher sent PUBREL id=21",
              {"packet_id": 21, "reason_code": 0, "properties": {}})
        _brec(g, P, a.recv(PUBLISH), "PUBLISH",
              "forwarded to a retain_as_published qos 2 subscription from PUBLISH qos=2 "
              "retain=1 brokk/v5/q2 'two'",
              {"topic": "brokk/v5/q2", "qos": 2, "retain": True, "dup": False, "packet_id": 2,
               "payload": "two", "properties": {"subscription_identifiers": [7]}})
        a.send(enc_ack(PUBREC, 2, 5))
        _brec(g, P, a.recv(PUBREL), "PUBREL", "subscriber sent PUBREC id=2",
              {"packet_id": 2, "reason_code": 0, "properties": {}})
        a.send(enc_ack(PUBCOMP, 2, 5))

        # Reason codes on acks.
        b.send(enc_publish(5, "brokk/v5/nobody", "lonely", qos=1, pid=22))
        _brec(g, P, b.recv(PUBACK), "PUBACK",
              "publisher sent PUBLISH qos=1 id=22 to brokk/v5/nobody (no subscribers)",
              {"packet_id": 22, "reason_code": 0x10, "properties": {}})
        # (A QoS 2 PUBLISH without subscribers gets PUBREC 0x00 from mosquitto
        # 2.0.11, not 0x10 -- the spec allows either, so it is not a fixture.)
        b.send(enc_publish(5, "forbidden/v5", "denied", qos=1, pid=24))
        _brec(g, P, b.recv(PUBACK), "PUBACK",
              "publisher sent PUBLISH qos=1 id=24 to forbidden/v5 (dynsec: anonymous may "
              "publish to brokk/# only)",
              {"packet_id": 24, "reason_code": 0x87, "properties": {}})
        b.send(enc_publish(5, "forbidden/v5", "denied", qos=2, pid=25))
        _brec(g, P, b.recv(PUBREC), "PUBREC",
              "publisher sent PUBLISH qos=2 id=25 to forbidden/v5 (dynsec: anonymous may "
              "publish to brokk/# only)",
              {"packet_id": 25, "reason_code": 0x87, "properties": {}})
        b.send(enc_ack(PUBREL, 25, 5))
        b.recv(PUBCOMP)

        # Retained message on a new subscription.
        a.send(enc_subscribe(5, 2, [("brokk/v5/q2", sub_opts(1))]))
        a.recv(SUBACK)
        _brec(g, P, a.recv(PUBLISH), "PUBLISH",
              "retained 'two' delivered on new subscription brokk/v5/q2 qos 1 (no "
              "subscription identifier on this SUBSCRIBE)",
              {"topic": "brokk/v5/q2", "qos": 1, "retain": True, "dup": False, "packet_id": 3,
               "payload": "two", "properties": {}})
        a.send(enc_ack(PUBACK, 3, 5))
        b.send(enc_publish(5, "brokk/v5/q2", "", qos=0, retain=True))  # clear it
        a.recv(PUBLISH)  # ... which A is still subscribed to

        a.send(enc_unsubscribe(5, 3, ["brokk/v5/q0", "brokk/v5/never"]))
        _brec(g, P, a.recv(UNSUBACK), "UNSUBACK",
              "UNSUBSCRIBE id=3 [brokk/v5/q0 (subscribed), brokk/v5/never (not subscribed)]",
              {"packet_id": 3, "properties": {}, "reason_codes": [0x00, 0x11]})
        a.send(PINGREQ_BYTES)
        _brec(g, P, a.recv(PINGRESP), "PINGRESP", "PINGREQ", {})

        # Session takeover: same client id connects again.
        a2 = RawClient(m.port, "A5bis", 5)
        try:
            a2.send(enc_connect(5, "golden-a5", keep_alive=30, clean=True))
            a2.recv(CONNACK)
            # MQTT 5 wants DISCONNECT 0x8E (session taken over) here; mosquitto
            # 2.0.11 just closes the old connection. Record it if it ever does.
            try:
                raw = a.recv(DISCONNECT)
                _brec(g, P, raw, "DISCONNECT",
                      "a second client connected with the same client_id 'golden-a5'",
                      {"reason_code": 0x8E, "properties": {}})
            except EOFError:
                g.notes.append("mosquitto closed the taken-over v5 connection without "
                               "sending DISCONNECT 0x8E")
            a2.send(enc_disconnect(5))
        finally:
            a2.close()
        b.send(enc_disconnect(5))

        # Server-initiated DISCONNECTs for protocol violations.
        c = RawClient(m.port, "E5", 5)
        try:
            c.send(enc_connect(5, "golden-e5", keep_alive=30, clean=True))
            c.recv(CONNACK)
            c.send(enc_publish(5, "brokk/v5/alias", "x", qos=0,
                               props=[("topic_alias", MOSQ_MAX_TOPIC_ALIAS + 1)]))
            _brec(g, P, c.recv(DISCONNECT), "DISCONNECT",
                  f"client sent PUBLISH with topic_alias={MOSQ_MAX_TOPIC_ALIAS + 1} (CONNACK "
                  f"topic_alias_maximum={MOSQ_MAX_TOPIC_ALIAS})",
                  {"reason_code": 0x94, "properties": {}})
        finally:
            c.close()
        c = RawClient(m.port, "F5", 5)
        try:
            c.send(enc_connect(5, "golden-f5", keep_alive=30, clean=True))
            c.recv(CONNACK)
            c.send(bytes.fromhex("3605000162000100"))  # PUBLISH with QoS bits 11
            _brec(g, P, c.recv(DISCONNECT), "DISCONNECT",
                  "client sent PUBLISH with both QoS bits set (36 05 00 01 62 00 01 00: "
                  "malformed, MQTT-3.3.1-4)",
                  {"reason_code": 0x81, "properties": {}})
        finally:
            c.close()
    finally:
        a.close()
        b.close()


# =========================================================================
# main
# =========================================================================

def tool_versions() -> dict[str, str]:
    def dpkg(p):
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", p], capture_output=True,
                              text=True, check=True).stdout.strip()
    mosq = dpkg("mosquitto")
    cli = dpkg("mosquitto-clients")
    upstream = cli.split("-")[0]
    mqttjs = json.loads((JS_DIR / "node_modules" / "mqtt" / "package.json").read_text())["version"]
    node = subprocess.run(["node", "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()
    return {
        "mosquitto_pub": f"mosquitto_pub {upstream} (Debian mosquitto-clients {cli})",
        "mosquitto_sub": f"mosquitto_sub {upstream} (Debian mosquitto-clients {cli})",
        "paho": f"paho-mqtt {pkg_version('paho-mqtt')} (Python "
                f"{'.'.join(map(str, sys.version_info[:3]))})",
        "mqttjs": f"mqtt (MQTT.js) {mqttjs} (node {node})",
        "mosquitto-broker": f"mosquitto {mosq.split('-')[0]} (Debian mosquitto {mosq})",
    }


def main() -> int:
    global VERBOSE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=GOLDEN_DIR)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    VERBOSE = args.verbose

    try:
        versions = tool_versions()
        import paho.mqtt  # noqa: F401
    except Exception as e:  # noqa: BLE001
        print(f"missing tools ({e}); run scripts/install-clients.sh first", file=sys.stderr)
        return 2
    if not pkg_version("paho-mqtt").startswith("2."):
        print("paho-mqtt 2.x required; run scripts/install-clients.sh", file=sys.stderr)
        return 2

    g = Golden(args.out, versions)
    for step in (mosquitto_cli_scenarios, paho_scenarios, mqttjs_scenarios, broker_scenarios):
        t0 = time.monotonic()
        step(g)
        log(f"{step.__name__}: {time.monotonic() - t0:.1f}s")

    if g.errors:
        print(f"FAILED: {len(g.errors)} problem(s); nothing written:", file=sys.stderr)
        for e in g.errors:
            print(f"  - {e}", file=sys.stderr)
        return 1

    g.write()
    print(f"wrote {len(g.entries)} fixtures (+ manifest.json) to "
          f"{os.path.relpath(args.out, Path.cwd())}; {g.checked} captures checked against "
          f"their expectations, {g.duplicates} byte-identical duplicates not written, "
          f"{sum(1 for e in g.entries if not e['minimal_encoding'])} not minimally encoded")
    for key, desc in versions.items():
        print(f"  {key:17} {desc}")
    for n in g.notes:
        print(f"  note: {n}")
    table: dict[tuple[str, str], int] = {}
    for e in g.entries:
        k = (e["packet_type"], PROTO_TAG[e["protocol_level"]])
        table[k] = table.get(k, 0) + 1
    types = [t for t in TYPE_NAMES.values() if any(k[0] == t for k in table)]
    print(f"  {'packet type':12} {'v31':>5} {'v311':>5} {'v5':>5}")
    for t in types:
        print(f"  {t:12} " + " ".join(f"{table.get((t, p), 0):>5}" for p in ("v31", "v311", "v5")))
    by_src: dict[str, int] = {}
    for e in g.entries:
        s = e["file"].split("-v")[0]
        by_src[s] = by_src.get(s, 0) + 1
    print("  by source: " + ", ".join(f"{s} {n}" for s, n in by_src.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
