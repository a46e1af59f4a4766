#!/usr/bin/env python3
"""Records what a real NBD server (nbdkit, qemu-nbd) sends to a client that asks what ferry's
client asks, and writes it in the input formats of the fuzz targets nbd_handshake, nbd_replies
and nbd_block_status. The server's bytes are kept exactly as received; only the few header
bytes that tell a target what the client negotiated are put in front.

    capture/nbd.py SOCKET NAME [--export E] [--structured] [--bitmap B] [--size-sel N]

writes seeds/nbd_handshake/NAME, seeds/nbd_replies/NAME and, when block status was
negotiated, seeds/nbd_block_status/NAME-*.
"""

import argparse
import os
import socket
import struct

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
OPT_EXPORT_NAME, OPT_GO, OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT = 1, 7, 8, 10
REP_ACK, REP_INFO, REP_META_CONTEXT = 1, 3, 4
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3
REQUEST_MAGIC, SIMPLE_MAGIC, STRUCTURED_MAGIC = 0x25609513, 0x67446698, 0x668E33EF
CMD_READ, CMD_FLUSH, CMD_BLOCK_STATUS = 0, 3, 7
CHUNK_BLOCK_STATUS = 5
REPLY_FLAG_DONE = 1

SEEDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "seeds")


class Recorder:
    """A client socket that keeps every byte the server sent."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.got = bytearray()

    def read(self, n):
        out = bytearray()
        while len(out) < n:
            b = self.s.recv(n - len(out))
            if not b:
                raise EOFError("server closed")
            out += b
        self.got += out
        return bytes(out)

    def send(self, b):
        self.s.sendall(b)

    def take(self):
        b, self.got = bytes(self.got), bytearray()
        return b


def option(opt, data=b""):
    return struct.pack(">QII", IHAVEOPT, opt, len(data)) + data


def opt_reply(c):
    magic, opt, rep, n = struct.unpack(">QIII", c.read(20))
    assert magic == OPT_REPLY_MAGIC, hex(magic)
    return opt, rep, c.read(n)


def handshake(c, export, structured, bitmap):
    """ferry's handshake (source/nbd/handshake.rs); the meta context ids the server gave."""
    g = c.read(18)
    magic, _, sflags = struct.unpack(">QQH", g)
    assert magic == NBDMAGIC
    fixed, no_zeroes = sflags & 1, sflags & 2
    c.send(struct.pack(">I", (1 if fixed else 0) | (2 if no_zeroes else 0)))
    ids = {}
    exp = export.encode()
    if not fixed:
        c.send(option(OPT_EXPORT_NAME, exp))
        c.read(10 if no_zeroes else 134)
        return ids, False
    sr = False
    if structured:
        c.send(option(OPT_STRUCTURED_REPLY))
        _, rep, _ = opt_reply(c)
        sr = rep == REP_ACK
    if sr:
        queries = [b"base:allocation"] + ([b"qemu:dirty-bitmap:" + bitmap.encode()] if bitmap else [])
        d = struct.pack(">I", len(exp)) + exp + struct.pack(">I", len(queries))
        for q in queries:
            d += struct.pack(">I", len(q)) + q
        c.send(option(OPT_SET_META_CONTEXT, d))
        while True:
            _, rep, p = opt_reply(c)
            if rep == REP_META_CONTEXT:
                ids[p[4:].decode()] = struct.unpack(">I", p[:4])[0]
            else:
                break
    c.send(option(OPT_GO, struct.pack(">I", len(exp)) + exp + struct.pack(">HH", 1, INFO_BLOCK_SIZE)))
    while True:
        _, rep, p = opt_reply(c)
        if rep != REP_INFO:
            break
    return ids, sr


def request(c, cmd, cookie, offset, length):
    c.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, cookie, offset, length))


def replies(c, pending, structured):
    """Reads replies until every cookie in `pending` ({cookie: read length or 0}) is done;
    returns the block status payloads seen, with their cookies."""
    payloads = []
    while pending:
        head = c.read(4)
        (magic,) = struct.unpack(">I", head)
        if magic == SIMPLE_MAGIC:
            err, cookie = struct.unpack(">IQ", c.read(12))
            n = pending.pop(cookie)
            if err == 0 and n:
                c.read(n)
        else:
            assert magic == STRUCTURED_MAGIC, hex(magic)
            flags, kind, cookie, n = struct.unpack(">HHQI", c.read(16))
            p = c.read(n)
            if kind == CHUNK_BLOCK_STATUS:
                payloads.append((cookie, p))
            if flags & REPLY_FLAG_DONE:
                pending.pop(cookie)
    return payloads


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("socket")
    ap.add_argument("name")
    ap.add_argument("--export", default="")
    ap.add_argument("--structured", action="store_true")
    ap.add_argument("--bitmap")
    ap.add_argument("--size-sel", type=int, default=0, help="the targets' size choice (0: 1 MiB)")
    ap.add_argument("--handshake-only", action="store_true", help="the server refuses the export")
    a = ap.parse_args()
    sizes = [1 << 20, (1 << 20) + 512]

    c = Recorder(a.socket)
    ids, structured = handshake(c, a.export, a.structured, a.bitmap)
    hs_flags = (1 if a.structured else 0) | (2 if a.bitmap else 0) | (4 if a.export else 0)
    write("nbd_handshake", a.name, bytes([hs_flags]) + c.take())
    if a.handshake_only:
        return

    base = ids.get("base:allocation")
    dirty = ids.get("qemu:dirty-bitmap:" + a.bitmap) if a.bitmap else None
    size = sizes[a.size_sel]
    # The requests nbd_replies makes, in its order; those its client answers itself are skipped.
    plan = [
        (CMD_READ, 0, 4096),
        (CMD_READ, 8192, 1000),
        (CMD_BLOCK_STATUS, 4096, size - 4096) if base is not None else None,
        (CMD_BLOCK_STATUS, 0, size) if dirty is not None else None,
        (CMD_FLUSH, 0, 0),
        (CMD_READ, size - 512, 512),
    ]
    pending = {}
    offsets = {}
    cookie = 1
    for p in plan:
        if p is None:
            continue
        cmd, off, n = p
        request(c, cmd, cookie, off, n)
        pending[cookie] = n if cmd == CMD_READ else 0
        offsets[cookie] = off
        cookie += 1
    payloads = replies(c, pending, structured)
    flags = (1 if structured else 0) | (2 if base is not None else 0) | (4 if dirty is not None else 0)
    head = bytes([flags, a.size_sel]) + struct.pack(">II", base or 0, dirty or 0)
    write("nbd_replies", a.name, head + c.take())

    for i, (cookie, p) in enumerate(payloads):
        (ctx,) = struct.unpack(">I", p[:4])
        is_dirty = ctx == dirty
        # nbd_block_status's offset choices: 0 -> 0, 1 -> 4096.
        at = {0: 0, 4096: 1}[offsets[cookie]]
        head = bytes([1 if is_dirty else 0, a.size_sel, at]) + struct.pack(">I", ctx)
        write("nbd_block_status", "%s-%d" % (a.name, i), head + p)
    request(c, 2, cookie, 0, 0)


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    print("%s/%s: %d bytes" % (target, name, len(data)))


if __name__ == "__main__":
    main()
