"""HTTP ingest receiver for the network fault test (F2), run inside its own network
namespace: `python3 receiver.py ADDRESS PORT DIR`.

Every accepted request body (a JSON array, gunzipped if needed) is appended as one line
to DIR/accepted.jsonl. Answers are steered by files the test writes in DIR: `status`
(answer this status instead of 200, record nothing) and `delay_ms` (wait this long
before answering). DIR/ready is created once the socket listens.
"""

import gzip
import http.server
import os
import sys
import threading
import time

ADDRESS, PORT, DIR = sys.argv[1], int(sys.argv[2]), sys.argv[3]
LOCK = threading.Lock()


def read_int(name):
    try:
        with open(os.path.join(DIR, name)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        delay = read_int("delay_ms")
        if delay:
            time.sleep(delay / 1000)
        status = read_int("status") or 200
        if status == 200:
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            with LOCK, open(os.path.join(DIR, "accepted.jsonl"), "ab") as f:
                f.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer((ADDRESS, PORT), Handler)
server.daemon_threads = True
open(os.path.join(DIR, "ready"), "w").close()
server.serve_forever()
