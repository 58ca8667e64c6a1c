#!/usr/bin/python3
"""smtp_sink.py PORT OUTFILE — the SMTP server of benchmark scenario 5
(docs/benchmarks.md): a local aiosmtpd server (Debian python3-aiosmtpd) that
accepts every message and appends one JSON line per accepted message to
OUTFILE: the time the DATA was complete (CLOCK_REALTIME, just before the 250
reply goes out: "accepted"), the recipient, Message-ID, X-Orgmesh-Event-Id
and the access request id of the link in the body. Nothing else is kept.
Prints "ready" once it listens; stops on SIGTERM or SIGINT.

Run it with Debian's /usr/bin/python3 (aiosmtpd). It runs in a process of
its own so that the load driver does not delay its replies (one GIL each)."""

import base64
import json
import re
import signal
import sys
import threading
import time

from aiosmtpd.controller import Controller

LINK_REQ = re.compile(rb"[?&]request=([^&\s]+)")


def header(head, name):
    m = re.search(rb"(?im)^" + re.escape(name) + rb":[ \t]*(.*?)\r?$", head)
    return m.group(1).decode("ascii", "replace").strip() if m else ""


class Sink:
    def __init__(self, out):
        self.out = out
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        t = time.time()
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode()
        head, _, body = raw.partition(b"\r\n\r\n")
        req = ""
        try:
            m = LINK_REQ.search(base64.b64decode(body, validate=False))
            if m:
                req = m.group(1).decode()
        except ValueError:
            pass
        rec = {"t": t, "rcpt": ",".join(envelope.rcpt_tos), "message_id": header(head, b"Message-ID"),
               "event_id": header(head, b"X-Orgmesh-Event-Id"), "request": req, "bytes": len(raw)}
        self.out.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.out.flush()
        self.n += 1
        return "250 Message accepted for delivery"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: smtp_sink.py PORT OUTFILE")
    port = int(sys.argv[1])
    out = open(sys.argv[2], "a", buffering=1 << 16)
    sink = Sink(out)
    ctl = Controller(sink, hostname="127.0.0.1", port=port)
    ctl.start()
    print("ready", flush=True)
    done = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: done.set())
    while not done.wait(1.0):
        pass
    ctl.stop()
    out.close()
    print(f"smtp_sink: {sink.n} messages accepted", file=sys.stderr)


if __name__ == "__main__":
    main()
