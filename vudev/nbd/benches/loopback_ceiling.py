#!/usr/bin/env python3
"""The transport's ceiling, without NBD: how fast bytes move over 127.0.0.1 TCP (and a Unix
socket) on this machine, 1 and 4 streams at once, each stream a sender process writing
256 KiB buffers and a receiver process reading into one (no disk, no copy but the
kernel's). GiB/s = total bytes / time from the first connect to the last byte read;
median of --runs.

Usage: loopback_ceiling.py [--size GIB] [--runs N] [--streams 1,4]
"""

import argparse
import os
import socket
import statistics
import time

CHUNK = 256 << 10
GIB = 1 << 30


def receive(sock):
    """Reads until EOF; returns the byte count."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got = 0
    while True:
        n = sock.recv_into(view)
        if n == 0:
            return got
        got += n


def send(sock, total):
    data = memoryview(os.urandom(CHUNK))
    left = total
    while left > 0:
        n = min(left, CHUNK)
        sock.sendall(data[:n])
        left -= n
    sock.shutdown(socket.SHUT_WR)


def run(streams, total, family, path):
    """One run: `streams` sender/receiver pairs moving `total` bytes; returns seconds."""
    if family == socket.AF_UNIX:
        if os.path.exists(path):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        address = path
    else:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        address = listener.getsockname()
    listener.listen(streams)
    per = total // streams
    start = time.monotonic()
    children = []
    for _ in range(streams):
        pid = os.fork()
        if pid == 0:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.connect(address)
            send(s, per)
            os._exit(0)
        children.append(pid)
    receivers = []
    for _ in range(streams):
        conn, _ = listener.accept()
        pid = os.fork()
        if pid == 0:
            got = receive(conn)
            os._exit(0 if got == per else 1)
        conn.close()
        receivers.append(pid)
    ok = True
    for pid in receivers:
        ok &= os.waitpid(pid, 0)[1] == 0
    elapsed = time.monotonic() - start
    for pid in children:
        os.waitpid(pid, 0)
    listener.close()
    if not ok:
        raise RuntimeError("a receiver got the wrong byte count")
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=float, default=2, help="GiB per run (default 2)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--streams", default="1,4")
    args = ap.parse_args()
    total = int(args.size * GIB)
    path = f"/tmp/loopback-ceiling-{os.getpid()}.sock"
    print("transport  streams  GiB/s (median)  runs")
    for name, family in (("tcp", socket.AF_INET), ("unix", socket.AF_UNIX)):
        for streams in (int(s) for s in args.streams.split(",")):
            rates = [total / GIB / run(streams, total, family, path) for _ in range(args.runs)]
            runs = " / ".join(f"{r:.2f}" for r in rates)
            print(f"{name:9}  {streams:7}  {statistics.median(rates):14.2f}  {runs}")
    if os.path.exists(path):
        os.unlink(path)


if __name__ == "__main__":
    main()
