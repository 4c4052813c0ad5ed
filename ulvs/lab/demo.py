"""``ulvs demo``: a real LVS-NAT cluster in network namespaces, driven and shown.

It builds the lab (client LAN, director, server LAN with three real servers) and starts
``ulvs run`` in the director with a NAT ``wlc`` service over the three real servers (weights
3, 2, 1). A batch of HTTP requests then comes from eight client addresses, one new connection
each. The demo prints what ``ulvsadm -L -n`` and ``-L -n -c`` show and how many requests each
real server answered (by the name in its reply). Then it stops the daemon and tears everything
down.
"""

from __future__ import annotations

import sys
from collections import Counter

from ulvs.lab.director import director
from ulvs.lab.topology import Lab

RULES = """\
-A -t 10.77.1.100:80 -s wlc
-a -t 10.77.1.100:80 -r 10.77.2.11:80 -m -w 3
-a -t 10.77.1.100:80 -r 10.77.2.12:80 -m -w 2
-a -t 10.77.1.100:80 -r 10.77.2.13:80 -m -w 1
-A -u 10.77.1.100:5353 -s rr
-a -u 10.77.1.100:5353 -r 10.77.2.11:5353 -m -w 1
-a -u 10.77.1.100:5353 -r 10.77.2.12:5353 -m -w 1
-a -u 10.77.1.100:5353 -r 10.77.2.13:5353 -m -w 1
"""


def run_lab_demo(requests: int = 60, backend: str = "afpacket") -> int:
    say = print
    say("Building the lab: client LAN 10.77.0.0/24, director, server LAN 10.77.2.0/24, "
        "real servers rs1-rs3 (10.77.2.11-13), VIP 10.77.1.100 ...")
    with Lab(clients=8) as lab:
        say(f"Starting `ulvs run --backend {backend}` in the director with this configuration:")
        say("".join(f"    {line}\n" for line in RULES.splitlines()), end="")
        with director(lab, RULES, backend) as d:
            say(f"\n$ curl http://{lab.vip}/   x{requests}, from {len(lab.client_addrs)} client addresses")
            results = lab.http_get("client", lab.vip, count=requests, src=list(lab.client_addrs))
            failed = [r for r in results if r.error or r.status != 200]
            served = Counter(r.server or "?" for r in results if not r.error)
            replies = lab.udp_echo("client", lab.vip, "hello", count=3)
            say("\n$ ulvsadm -L -n")
            say(d.listing(), end="")
            conns = d.listing("-c").splitlines()
            say(f"\n$ ulvsadm -L -n -c   (first 8 of {len(conns) - 2})")
            say("\n".join(conns[:10]))
            say("\nRequests answered per real server (weights 3:2:1, scheduler wlc):")
            for name in sorted(served):
                say(f"  {name}: {served[name]:3d}  {'#' * served[name]}")
            say(f"  failed: {len(failed)}")
            say(f"UDP echo through the VIP: {replies}")
        say("\nDaemon stopped; tearing the lab down.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_lab_demo())
