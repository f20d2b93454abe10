"""WebSocket echo load for bench/http_bench.py: N connections, each sends a
64-byte text message and waits for its echo, again and again, for SECONDS.
Prints the messages echoed per second. The frames are built once (a fixed
mask) and the echo is counted by length, so the client costs little.

    /usr/bin/python3 bench/ws_load.py PORT SECONDS CONNECTIONS
"""
import asyncio
import os
import struct
import sys
import time

PAYLOAD = b"m" * 64
MASK = b"\x01\x02\x03\x04"
FRAME = struct.pack("!BB", 0x81, 0x80 | len(PAYLOAD)) + MASK + bytes(
    c ^ MASK[i % 4] for i, c in enumerate(PAYLOAD))
ECHO = 2 + len(PAYLOAD)  # the server's frame: unmasked, 2-byte header

HANDSHAKE = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class Client(asyncio.Protocol):
    def __init__(self, ready: asyncio.Future, stop_at: float) -> None:
        self.ready = ready
        self.stop_at = stop_at
        self.upgraded = False
        self.buf = b""
        self.pending = 0
        self.count = 0

    def connection_made(self, transport) -> None:
        self.t = transport
        transport.write(HANDSHAKE)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.buf += data
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            assert head.startswith(b"HTTP/1.1 101"), head
            self.upgraded = True
            self.buf = b""
            self.pending = len(rest)
            self.ready.set_result(None)
            return
        self.pending += len(data)
        while self.pending >= ECHO:
            self.pending -= ECHO
            self.count += 1
            if time.monotonic() < self.stop_at:
                self.t.write(FRAME)

    def go(self) -> None:
        self.t.write(FRAME)


async def main(port: int, seconds: float, n: int) -> None:
    loop = asyncio.get_running_loop()
    start = time.monotonic() + 1.0
    clients = []
    for _ in range(n):
        ready = loop.create_future()
        _, c = await loop.create_connection(lambda: Client(ready, start + seconds),
                                            "127.0.0.1", port)
        await ready
        clients.append(c)
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    t0 = time.monotonic()
    for c in clients:
        c.stop_at = t0 + seconds
        c.go()
    await asyncio.sleep(seconds + 0.2)
    total = sum(c.count for c in clients)
    print(f"{total / seconds:.0f}")
    for c in clients:
        c.t.close()


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])))
