"""Python side of py_channel_SUITE: code written as for erlang_python."""
import asyncio
import os

import erlang
from erlang.channel import Channel, ChannelClosed, reply
from erlang.byte_channel import ByteChannel, ByteChannelClosed


def collect(ch):
    return list(Channel(ch))


def recv_one(ch, timeout_ms):
    try:
        return ("got", Channel(ch).receive(timeout_ms))
    except TimeoutError:
        return "timeout"
    except ChannelClosed:
        return "closed"


def try_one(ch):
    return Channel(ch).try_receive()


async def async_collect(ch):
    out = []
    async for item in erlang.Channel(ch):
        out.append(item)
    return out


def serve(ch):
    """Answers {From, N} requests with N * 2 until the channel closes."""
    with Channel(ch) as c:
        for sender, n in c:
            reply(sender, ("double", n * 2))
    return "done"


def pid_of_worker():
    return os.getpid()


def forged(token):
    try:
        Channel(("py_channel", None, token)).receive(0)
    except ChannelClosed:
        return "closed"
    return "reached"


def not_a_handle():
    try:
        Channel(42)
    except TypeError:
        return "type_error"


def upper_bytes(ch):
    """Sends back every chunk upper-cased, then closes."""
    b = ByteChannel(ch)
    n = 0
    for chunk in b:
        b.send_bytes(chunk.upper())
        n += 1
    return n


def send_bytes_until_full(ch, size):
    b = ByteChannel(ch)
    sent = 0
    try:
        while True:
            b.send_bytes(b"x" * size)
            sent += 1
    except RuntimeError as e:
        return (sent, str(e))


def byte_try(ch):
    return ByteChannel(ch).try_receive_bytes()


async def byte_async(ch):
    b = ByteChannel(ch)
    return [c async for c in b]


def hostile(token):
    """Requests no well-behaved Channel sends: each is answered, none
    reaches anything."""
    from erlang import _link
    out = []
    for verb, tok, args in [("recv", "0" * 32, [0]), ("bogus", token, []),
                            ("recv", token, ["x"]), ("send", token, [b"x" * 100]),
                            ("recv", 5, [0]), ("recv", token, [0, 1]),
                            ("read", token, [10, True])]:
        try:
            out.append(_link.request("handle", [verb, tok, args]))
        except Exception as e:
            out.append(type(e).__name__)
    return out


def many_waiters(ch, n):
    """n threads wait on one channel at once: one waits, the others are
    refused at once."""
    import threading
    results = []
    lock = threading.Lock()

    def wait():
        r = recv_one_thread(ch)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=wait) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r != "refused"], results.count("refused")


def recv_one_thread(ch):
    try:
        return ("got", Channel(ch).receive(10000))
    except RuntimeError:
        return "refused"
