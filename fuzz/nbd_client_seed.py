#!/usr/bin/env python3
"""Writes a seed for the nbd_client fuzz target: what a server sends to our client for
a handshake (structured replies, base:allocation, NBD_OPT_GO), one block status reply
and one read reply. Usage: nbd_client_seed.py OUT"""
import struct, sys

def opt_reply(opt, kind, data=b""):
    return struct.pack(">QIII", 0x3E889045565A9, opt, kind, len(data)) + data

def chunk(cookie, kind, payload, done=True):
    return struct.pack(">IHHQI", 0x668E33EF, 1 if done else 0, kind, cookie, len(payload)) + payload

size = 1 << 20
out = struct.pack(">QQH", 0x4E42444D41474943, 0x49484156454F5054, 3)
out += opt_reply(8, 1)                                        # structured replies: ACK
out += opt_reply(10, 4, struct.pack(">I", 1) + b"base:allocation") + opt_reply(10, 1)
out += opt_reply(7, 3, struct.pack(">HQH", 0, size, 1 | 4 | 8)) + opt_reply(7, 1)
out += chunk(1, 5, struct.pack(">III", 1, size, 0))          # block status: all data
out += chunk(2, 1, struct.pack(">Q", 0) + bytes(4096))      # read: offset data
open(sys.argv[1], "wb").write(out)
