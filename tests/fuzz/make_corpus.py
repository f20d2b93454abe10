#!/usr/bin/python3
"""Writes the seed corpus of fuzz_codec into tests/fuzz/corpus: every shared
test vector (proto/vectors) inside request frames, several frames in one
stream, and an oversized frame. Run again after the vectors change; the
fuzzer's own findings are kept beside these seeds."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "..", "proto", "vectors")
CORPUS = os.path.join(HERE, "corpus")


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def fixarray(*items: bytes) -> bytes:
    return bytes([0x90 | len(items)]) + b"".join(items)


def fixstr(s: str) -> bytes:
    b = s.encode()
    return bytes([0xa0 | len(b)]) + b


def main() -> None:
    os.makedirs(CORPUS, exist_ok=True)
    names = sorted(n for n in os.listdir(VECTORS) if n.endswith(".msgpack"))
    frames = []
    for i, name in enumerate(names, 1):
        with open(os.path.join(VECTORS, name), "rb") as f:
            value = f.read()
        # CALL [1, Id, "m", "f", [Value], {}], then EVAL with Value as a local.
        call = frame(fixarray(b"\x01", bytes([i]), fixstr("m"), fixstr("f"), fixarray(value), b"\x80"))
        evl = frame(fixarray(b"\x03", bytes([i]), fixstr("x"), b"\x81" + fixstr("x") + value, b"\x00"))
        frames.append(call)
        for chunk, data in ((0, call), (3, evl)):
            with open(os.path.join(CORPUS, f"seed-{name[:-8]}-{chunk}"), "wb") as f:
                f.write(bytes([chunk]) + data)
    with open(os.path.join(CORPUS, "seed-stream"), "wb") as f:
        f.write(b"\x07" + b"".join(frames))
    with open(os.path.join(CORPUS, "seed-oversized"), "wb") as f:
        f.write(b"\x10" + struct.pack(">I", 100000) + fixarray(b"\x01", b"\x05") + b"\x00" * 64
                + frames[0])


if __name__ == "__main__":
    main()
