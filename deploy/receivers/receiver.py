#!/usr/bin/env python3
"""Example receiver for the Edgepipe HTTP sink (see ../wire-format.md).

Accepts POSTed batches in wire format v1, v2 or v3, plain or gzipped (or zstd on Python
3.14 and later: earlier ones answer 415), turns v2 and v3 back into v1 records, drops what
it has already seen (a batch by its Idempotency-Key, a record by its pipeline, node and
seq) and prints each new record as one JSON line on stdout.

    python3 receiver.py [--host 127.0.0.1] [--port 8080]

Python 3 standard library only. An example, not an ingest service: what it has seen is
kept in memory and forgotten on restart, and requests are handled one at a time.
"""

import argparse
import datetime
import gzip
import json
import struct
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

try:  # Python 3.14 and later
    from compression import zstd
except ImportError:
    zstd = None

V2_FORMAT = "edgepipe.v2"
V3_MAGIC = b"EPv3"
MAX_BODY = 64 << 20
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


class Rejected(Exception):
    """A request the agent should not send again as it is."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def timestamp(ms):
    """Unix milliseconds as a v1 timestamp: RFC 3339, UTC, milliseconds."""
    d = EPOCH + datetime.timedelta(milliseconds=ms)
    return (f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"
            f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}.{ms % 1000:03d}Z")


def from_v2(doc):
    """The v1 records of a v2 batch, in seq order."""
    records = []
    for g in doc["groups"]:
        n = len(g["seq"])
        stats = g.get("stats", {})
        columns = [g["t"]] + [g[c] for c in ("value", "score", "labels") if c in g]
        if any(not isinstance(c, list) or len(c) != n for c in columns + list(stats.values())):
            raise ValueError("a column's length differs from seq's")
        for i in range(n):
            r = {"pipeline": doc["pipeline"], "node": doc["node"], "device": g["device"],
                 "topic": g["topic"], "kind": g["kind"]}
            if g.get("value", [None] * n)[i] is not None:
                r["value"] = g["value"][i]
            r["timestamp"] = timestamp(g["t"][i])
            r["seq"] = g["seq"][i]
            if g.get("score", [None] * n)[i] is not None:
                r["score"] = g["score"][i]
            s = {name: col[i] for name, col in stats.items() if col[i] is not None}
            if s:
                r["stats"] = s
            if g.get("labels", [None] * n)[i] is not None:
                r["labels"] = g["labels"][i]
            records.append(r)
    records.sort(key=lambda r: r["seq"])
    return records


class V3Reader:
    """A cursor over a v3 body; every read checks what is left."""

    def __init__(self, body):
        self.body = body
        self.at = 0
        self.strings = []

    def take(self, n):
        if n > len(self.body) - self.at:
            raise ValueError(f"v3: the batch ends too soon at byte {self.at}")
        chunk = self.body[self.at:self.at + n]
        self.at += n
        return chunk

    def varint(self):
        value = 0
        for shift in range(0, 70, 7):
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            if b < 0x80:
                if value >= 1 << 64:
                    break
                return value
        raise ValueError(f"v3: a varint longer than 64 bits at byte {self.at}")

    def zigzag(self):
        v = self.varint()
        return (v >> 1) ^ -(v & 1)

    def text(self):
        return self.take(self.varint()).decode("utf-8")

    def string(self):
        k = self.varint()
        if k == 0:
            s = self.text()
            self.strings.append(s)
            return s
        if k > len(self.strings):
            raise ValueError(f"v3: no string {k - 1}")
        return self.strings[k - 1]

    def tag(self, n):
        """(column tag without its bitmap bit, which of the n records have the field)."""
        tag = self.take(1)[0]
        if tag == 0:
            return 0, [False] * n
        if not tag & 0x10:
            return tag, [True] * n
        bits = self.take((n + 7) // 8)
        return tag & 0x0F, [bool(bits[i // 8] >> (i % 8) & 1) for i in range(n)]

    def numbers(self, n):
        tag, present = self.tag(n)
        if tag == 0:
            return [None] * n
        if tag == 1:
            scale = self.take(1)[0]
            if scale > 9:
                raise ValueError(f"v3: decimal scale {scale}")
        elif tag != 2:
            raise ValueError(f"v3: unknown column tag {tag}")
        out, m = [], 0
        for has in present:
            if not has:
                out.append(None)
            elif tag == 1:
                m = wrap64(m + self.zigzag())
                # int / int is correctly rounded in Python: the sent double, bit for bit.
                out.append(m / 10 ** scale)
            else:
                out.append(struct.unpack("<d", self.take(8))[0])
        return out


def wrap64(n):
    """n in 64-bit two's complement."""
    n &= (1 << 64) - 1
    return n - (1 << 64) if n >= 1 << 63 else n


def from_v3(body):
    """The v1 records of a v3 batch, in seq order."""
    if body[:4] != V3_MAGIC:
        raise ValueError("not a v3 batch")
    r = V3Reader(body)
    r.at = 4
    pipeline, node = r.string(), r.string()
    records = []
    for _ in range(r.varint()):
        device, topic, kind = r.string(), r.string(), r.string()
        n = r.varint()
        if n > len(body):
            raise ValueError("v3: more records than bytes")
        seqs, seq = [], 0
        for _ in range(n):
            seq = (seq + r.varint()) & ((1 << 64) - 1)
            seqs.append(seq)
        times, t = [], 0
        for _ in range(n):
            t = wrap64(t + r.zigzag())
            times.append(t)
        value, score = r.numbers(n), r.numbers(n)
        stats = [(r.string(), r.numbers(n)) for _ in range(r.varint())]
        tag, present = r.tag(n)
        if tag not in (0, 3):
            raise ValueError(f"v3: unknown labels tag {tag}")
        labels = [json.loads(r.text()) if has else None for has in present]
        for i in range(n):
            rec = {"pipeline": pipeline, "node": node, "device": device, "topic": topic,
                   "kind": kind}
            if value[i] is not None:
                rec["value"] = value[i]
            rec["timestamp"] = timestamp(times[i])
            rec["seq"] = seqs[i]
            if score[i] is not None:
                rec["score"] = score[i]
            s = {name: col[i] for name, col in stats if col[i] is not None}
            if s:
                rec["stats"] = s
            if labels[i] is not None:
                rec["labels"] = labels[i]
            records.append(rec)
    if r.at != len(body):
        raise ValueError(f"v3: {len(body) - r.at} bytes after the last group")
    records.sort(key=lambda rec: rec["seq"])
    return records


class Handler(BaseHTTPRequestHandler):
    seen_batches = set()  # Idempotency-Key values
    seen_records = set()  # (pipeline, node, seq)

    def do_POST(self):
        try:
            records = self.read_batch()
        except Rejected as e:
            return self.reply(e.status, e.reason)
        key = self.headers.get("Idempotency-Key")
        if key is not None and key in self.seen_batches:
            return self.reply(200, "duplicate batch")
        new = 0
        for r in records:
            ident = (r["pipeline"], r["node"], r["seq"])
            if ident not in self.seen_records:
                self.seen_records.add(ident)
                print(json.dumps(r, ensure_ascii=False, separators=(",", ":")), flush=True)
                new += 1
        if key is not None:
            self.seen_batches.add(key)
        self.reply(200, f"{new} new records, {len(records) - new} duplicates")

    def read_batch(self):
        """The batch's records as v1 objects, or Rejected (400, 413 and 415 make the
        agent dead-letter the batch instead of retrying it)."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise Rejected(411, "Content-Length required")
        if int(length) > MAX_BODY:
            raise Rejected(413, "batch too large")
        body = self.rfile.read(int(length))
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError) as e:
                raise Rejected(400, f"gzip: {e}")
        elif encoding == "zstd" and zstd is not None:
            try:
                body = zstd.decompress(body)
            except zstd.ZstdError as e:
                raise Rejected(400, f"zstd: {e}")
        elif encoding != "identity":
            hint = " (zstd needs Python 3.14 or later)" if encoding == "zstd" else ""
            raise Rejected(415, f"unsupported Content-Encoding {encoding!r}{hint}")
        # The body names its format (an array is v1); the header, when sent, must agree.
        declared = self.headers.get("Edgepipe-Format")
        try:
            if body[:4] == V3_MAGIC and declared in (None, "v3"):
                return self.checked(from_v3(body))
            doc = json.loads(body)
            if isinstance(doc, list) and declared in (None, "v1"):
                records = doc
            elif isinstance(doc, dict) and declared in (None, "v2"):
                if doc.get("format") != V2_FORMAT:
                    raise Rejected(415, f"unknown batch format {doc.get('format')!r}")
                records = from_v2(doc)
            else:
                raise Rejected(415, f"not a batch of format {declared!r}")
            return self.checked(records)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError) as e:
            raise Rejected(400, f"malformed batch: {e!r}")

    @staticmethod
    def checked(records):
        """records, if each has the fields it is deduplicated by."""
        for r in records:
            hash((r["pipeline"], r["node"], r["seq"]))
        return records

    def reply(self, status, text):
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    args = p.parse_args()
    server = HTTPServer((args.host, args.port), Handler)
    print(f"listening on {args.host}:{args.port}", file=sys.stderr)
    server.serve_forever()


if __name__ == "__main__":
    main()
