"""Traffic across a director failover, run inside the client namespace by path (stdlib only).

    python -I failover_probe.py VIP SECONDS BYTES RATE

* UDP: one socket (one flow, one source port) sends a numbered datagram to VIP:5353 every 10 ms
  and records when each answer came back and from which real server (the lab's echo answers
  ``rsN:payload``);
* TCP: one HTTP GET of ``/bytes/BYTES`` read at about RATE bytes/s, hashed as it streams.

Both run for up to SECONDS.  Prints one JSON object: ``udp`` = [[seq, sent, received|null,
server|null], ...] (CLOCK_MONOTONIC seconds, which every namespace shares) and ``tcp`` =
{length, sha256, status, error}.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import select
import socket
import sys
import threading
import time


def udp(vip: str, seconds: float, out: list[list[object]]) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((vip, 5353))
    s.setblocking(False)
    sent: dict[int, list[object]] = {}
    end = time.monotonic() + seconds
    nxt = time.monotonic()
    seq = 0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= nxt:
            seq += 1
            row: list[object] = [seq, now, None, None]
            sent[seq] = row
            out.append(row)
            try:
                s.send(f"p{seq}".encode())
            except OSError:
                pass
            nxt += 0.01
        r, _, _ = select.select([s], [], [], max(0.0, nxt - time.monotonic()))
        if r:
            try:
                data = s.recv(2048).decode(errors="replace")
            except OSError:
                continue
            server, _, payload = data.partition(":")
            if payload.startswith("p") and payload[1:].isdigit():
                got = sent.get(int(payload[1:]))
                if got is not None and got[2] is None:
                    got[2], got[3] = time.monotonic(), server


def tcp(vip: str, size: int, rate: float, res: dict[str, object]) -> None:
    h = hashlib.sha256()
    length = 0
    try:
        conn = http.client.HTTPConnection(vip, 80, timeout=10)
        conn.request("GET", f"/bytes/{size}")
        resp = conn.getresponse()
        res["status"] = resp.status
        t0 = time.monotonic()
        while True:
            chunk = resp.read(16384)
            if not chunk:
                break
            h.update(chunk)
            length += len(chunk)
            ahead = length / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    except (OSError, http.client.HTTPException) as e:
        res["error"] = f"{type(e).__name__}: {e}"
    res["length"] = length
    res["sha256"] = h.hexdigest()


def main() -> int:
    vip, seconds, size, rate = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    rows: list[list[object]] = []
    res: dict[str, object] = {"status": None, "error": None}
    threads = [threading.Thread(target=udp, args=(vip, seconds, rows)),
               threading.Thread(target=tcp, args=(vip, size, rate, res))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"udp": rows, "tcp": res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
