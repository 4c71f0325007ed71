#!/usr/bin/env python3
"""A lossy UDP relay between cluster nodes on one host, for benches/faults.sh.

Each node binds its gossip socket on a real port and advertises a proxy port; its peers
send to the proxy ports. A datagram from node Y's real port arriving at node X's proxy
port is sent on from Y's proxy socket to X's real port, so X sees it come from Y's
advertised address, as without the relay (nodes accept replication only from the address
a peer advertises). A fraction of datagrams, read from DROP_FILE on every datagram's
second, is dropped instead.

    udp_lossy_proxy.py DROP_FILE STATS_FILE name=REAL_PORT:PROXY_PORT ...

Writes `forwarded=N dropped=N` to STATS_FILE every second. Binds 127.0.0.1 only.
"""
import random
import select
import socket
import sys
import time


def main():
    drop_file, stats_file = sys.argv[1], sys.argv[2]
    nodes = {}
    for spec in sys.argv[3:]:
        name, ports = spec.split("=")
        real, proxy = (int(p) for p in ports.split(":"))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", proxy))
        nodes[name] = (real, sock)
    by_real = {("127.0.0.1", real): name for name, (real, _) in nodes.items()}
    by_sock = {sock: name for name, (_, sock) in nodes.items()}
    rng = random.Random(7)
    drop, drop_read = 0.0, 0.0
    forwarded = dropped = 0
    last_stats = 0.0
    while True:
        ready, _, _ = select.select(list(by_sock), [], [], 0.5)
        now = time.monotonic()
        if now - drop_read >= 1.0:
            try:
                drop = float(open(drop_file).read().strip() or 0)
            except (OSError, ValueError):
                drop = 0.0
            drop_read = now
        for sock in ready:
            try:
                data, src = sock.recvfrom(65536)
            except OSError:
                continue
            sender = by_real.get(src)
            if sender is None:
                continue  # not from a node's gossip socket
            if rng.random() < drop:
                dropped += 1
                continue
            receiver = by_sock[sock]
            try:
                nodes[sender][1].sendto(data, ("127.0.0.1", nodes[receiver][0]))
                forwarded += 1
            except OSError:
                pass  # the receiver is down (killed or stopped): a lost datagram
        if now - last_stats >= 1.0:
            with open(stats_file, "w") as f:
                f.write(f"forwarded={forwarded} dropped={dropped}\n")
            last_stats = now


if __name__ == "__main__":
    main()
