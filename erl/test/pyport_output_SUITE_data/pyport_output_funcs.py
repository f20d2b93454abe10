"""Python side of pyport_output_SUITE: code that prints."""
import asyncio
import sys
import threading


def shout(*lines):
    for line in lines:
        print(line)
    return len(lines)


def partial(text):
    print(text, end="")
    return True


def to_stderr(text):
    print(text, file=sys.stderr)
    return True


async def interleaved(tag, n):
    for i in range(n):
        print(f"{tag} {i}")
        await asyncio.sleep(0.01)
    return tag


def flood(n):
    for i in range(n):
        print(f"line {i}")
    return n


def long_line(n):
    print("é" * n)
    return n


def forge(request_id, text):
    """Hostile: an output line for a request that is not this one (or,
    request_id None, for this one, with text of any type)."""
    from erlang import _link, _output
    if request_id is None:
        request_id = _output._request.get()
    _link.notify("output", [request_id, text, True])
    return True


def in_thread(text):
    t = threading.Thread(target=lambda: print(text))
    t.start()
    t.join()
    return True


def sleep_printing(text, seconds):
    import time
    print(text)
    time.sleep(seconds)
    return True


def surrogate():
    print("bad \udcff char")
    return True
