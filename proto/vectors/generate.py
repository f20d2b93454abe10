#!/usr/bin/python3
"""Writes the shared codec test vectors (see proto/PROTOCOL.md).

This encoder is deliberately independent of the C++ and Erlang codecs: it is
the third implementation the two are checked against. Run it from anywhere:
    /usr/bin/python3 proto/vectors/generate.py
"""
import math
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# Real external-term-format bytes of a pid and a reference from node vecgen@vm.
PID_ETF = bytes([131, 88, 100, 0, 9, 118, 101, 99, 103, 101, 110, 64, 118, 109,
                 0, 0, 0, 85, 0, 0, 0, 0, 107, 2, 54, 130])
REF_ETF = bytes([131, 90, 0, 3, 100, 0, 9, 118, 101, 99, 103, 101, 110, 64, 118,
                 109, 107, 2, 54, 130, 0, 1, 201, 34, 195, 96, 0, 1, 242, 99, 54, 57])


class Ext:
    def __init__(self, code, payload):
        self.code, self.payload = code, payload


class Str(str):
    """Marks a value the wire carries as msgpack str (Python str)."""


def atom(name):
    return Ext(1, name.encode())


def tup(*items):
    return Ext(2, enc(list(items)))


def bigint(n):
    mag = abs(n)
    return Ext(3, bytes([1 if n < 0 else 0]) + mag.to_bytes((mag.bit_length() + 7) // 8, "big"))


def header(small_base, small_max, codes, n):
    if small_base is not None and n <= small_max:
        return bytes([small_base | n])
    for code, width in codes:
        if n < 1 << (8 * width):
            return bytes([code]) + n.to_bytes(width, "big")
    raise ValueError("too long")


def enc(v):
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if -(1 << 63) <= v < (1 << 64):
            if 0 <= v < 128:
                return bytes([v])
            if -32 <= v < 0:
                return struct.pack(">b", v)
            if v >= 0:
                for code, fmt in ((0xcc, ">B"), (0xcd, ">H"), (0xce, ">I"), (0xcf, ">Q")):
                    if v < 1 << (8 * struct.calcsize(fmt)):
                        return bytes([code]) + struct.pack(fmt, v)
            for code, fmt in ((0xd0, ">b"), (0xd1, ">h"), (0xd2, ">i"), (0xd3, ">q")):
                bits = 8 * struct.calcsize(fmt) - 1
                if -(1 << bits) <= v:
                    return bytes([code]) + struct.pack(fmt, v)
        return enc(bigint(v))
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, Str):
        b = v.encode()
        return header(0xa0, 31, ((0xd9, 1), (0xda, 2), (0xdb, 4)), len(b)) + b
    if isinstance(v, bytes):
        return header(None, 0, ((0xc4, 1), (0xc5, 2), (0xc6, 4)), len(v)) + v
    if isinstance(v, list):
        return header(0x90, 15, ((0xdc, 2), (0xdd, 4)), len(v)) + b"".join(map(enc, v))
    if isinstance(v, dict):
        return header(0x80, 15, ((0xde, 2), (0xdf, 4)), len(v)) + b"".join(
            enc(k) + enc(x) for k, x in v.items())
    if isinstance(v, Ext):
        n = len(v.payload)
        fixed = {1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8}
        if n in fixed:
            h = bytes([fixed[n]])
        else:
            h = header(None, 0, ((0xc7, 1), (0xc8, 2), (0xc9, 4)), n)
        return h + bytes([v.code]) + v.payload
    raise TypeError(type(v))


B = "both"
D = "decode"
E = "encode"
N = None  # this language has no form for the vector

# (name, wire value, erlang direction, erlang source, python direction, python source)
VECTORS = [
    ("int_zero", 0, B, "0", B, "0"),
    ("int_fix_max", 127, B, "127", B, "127"),
    ("int_u8", 200, B, "200", B, "200"),
    ("int_u16", 65535, B, "65535", B, "65535"),
    ("int_u32", 4294967295, B, "4294967295", B, "4294967295"),
    ("int_u64_max", 2**64 - 1, B, "18446744073709551615", B, "18446744073709551615"),
    ("int_neg_fix", -32, B, "-32", B, "-32"),
    ("int_i8", -33, B, "-33", B, "-33"),
    ("int_i16", -129, B, "-129", B, "-129"),
    ("int_i32", -40000, B, "-40000", B, "-40000"),
    ("int_i64_min", -(2**63), B, "-9223372036854775808", B, "-9223372036854775808"),
    ("int_big_pos", 2**64, B, "18446744073709551616", B, "18446744073709551616"),
    ("int_big_neg", -(2**63) - 1, B, "-9223372036854775809", B, "-9223372036854775809"),
    ("int_2_200", 2**200, B, "1606938044258990275541962092341162602522202993782792835301376", B, "2**200"),
    ("int_neg_2_200", -(2**200), B, "-1606938044258990275541962092341162602522202993782792835301376", B, "-2**200"),
    ("float_pi", 3.14159, B, "3.14159", B, "3.14159"),
    ("float_zero", 0.0, B, "0.0", B, "0.0"),
    ("float_neg", -1.5e300, B, "-1.5e300", B, "-1.5e300"),
    ("float_nan", math.nan, D, "nan", E, "float('nan')"),
    ("float_inf", math.inf, D, "infinity", B, "float('inf')"),
    ("float_neg_inf", -math.inf, D, "neg_infinity", B, "float('-inf')"),
    ("bin_empty", b"", B, "<<>>", D, "''"),
    ("bin_utf8", "héllo".encode(), B, "<<%s>>" % ",".join(map(str, "héllo".encode())), D, "'héllo'"),
    ("bin_not_utf8", b"\xff\xfe\x00", B, "<<255,254,0>>", B, "b'\\xff\\xfe\\x00'"),
    ("bin_300", b"x" * 300, B, "<<\"%s\">>" % ("x" * 300), D, "'x' * 300"),
    ("str_short", Str("hello"), D, "<<\"hello\">>", B, "'hello'"),
    ("str_40", Str("y" * 40), D, "<<\"%s\">>" % ("y" * 40), B, "'y' * 40"),
    ("bytes_marked", Ext(4, b"\x00\x01"), E, "{bytes, <<0,1>>}", D, "b'\\x00\\x01'"),
    ("true", True, B, "true", B, "True"),
    ("false", False, B, "false", B, "False"),
    ("nil_none", None, B, "none", B, "None"),
    ("nil_nil", None, E, "nil", N, ""),
    ("nil_undefined", None, E, "undefined", N, ""),
    ("atom_ok", atom("ok"), B, "ok", B, "erlang.Atom('ok')"),
    ("atom_1", atom("a"), B, "a", B, "erlang.Atom('a')"),
    ("atom_utf8", atom("ünïcode"), B, "'ünïcode'", B, "erlang.Atom('ünïcode')"),
    ("atom_empty", atom(""), B, "''", B, "erlang.Atom('')"),
    ("list_empty", [], B, "[]", B, "[]"),
    ("list_ints", [1, 2, 3], B, "[1,2,3]", B, "[1, 2, 3]"),
    ("list_16", list(range(16)), B, repr(list(range(16))), B, "list(range(16))"),
    ("charlist", [104, 105], B, "\"hi\"", B, "[104, 105]"),
    ("list_mixed", [1, 2.5, b"x", atom("y"), None], B, "[1, 2.5, <<\"x\">>, y, none]", D, "[1, 2.5, 'x', erlang.Atom('y'), None]"),
    ("tuple_empty", tup(), B, "{}", B, "()"),
    ("tuple_ok", tup(atom("ok"), 42), B, "{ok, 42}", B, "(erlang.Atom('ok'), 42)"),
    ("tuple_nested", tup(tup(1, tup()), [tup(2)]), B, "{{1, {}}, [{2}]}", B, "((1, ()), [(2,)])"),
    ("map_empty", {}, B, "#{}", B, "{}"),
    ("map_atom_key", {atom("a"): 1}, B, "#{a => 1}", B, "{erlang.Atom('a'): 1}"),
    ("map_bin_key", {b"k": b"v"}, B, "#{<<\"k\">> => <<\"v\">>}", D, "{'k': 'v'}"),
    ("map_str_key", {Str("k"): Str("v")}, D, "#{<<\"k\">> => <<\"v\">>}", B, "{'k': 'v'}"),
    ("map_nested", {atom("a"): {atom("b"): [1, {}]}}, B, "#{a => #{b => [1, #{}]}}", B, "{erlang.Atom('a'): {erlang.Atom('b'): [1, {}]}}"),
    ("map_int_keys", {1: atom("x"), 2: atom("y")}, B, "#{1 => x, 2 => y}", B, "{1: erlang.Atom('x'), 2: erlang.Atom('y')}"),
    ("pid", Ext(5, PID_ETF), B, "{'$etf', %s}" % repr(list(PID_ETF)), B, "erlang.Pid(%r)" % PID_ETF),
    ("ref", Ext(5, REF_ETF), B, "{'$etf', %s}" % repr(list(REF_ETF)), B, "erlang.Ref(%r)" % REF_ETF),
    ("set", [1, 2], N, "", E, "{1, 2}"),
    ("frozenset_empty", [], N, "", E, "frozenset()"),
    ("bytearray", b"ab", N, "", E, "bytearray(b'ab')"),
]


def main():
    erl_lines = ["%% -*- coding: utf-8 -*-", "%% Generated by generate.py: {Name, Direction, Term}.",
                 "%% {'$etf', Bytes} stands for binary_to_term(list_to_binary(Bytes))."]
    py_lines = ['"""Generated by generate.py: (name, direction, value)."""',
                "import erlang", "", "VECTORS = ["]
    names = set()
    for name, wire, erl_dir, erl_src, py_dir, py_src in VECTORS:
        assert name not in names, name
        names.add(name)
        with open(os.path.join(HERE, name + ".msgpack"), "wb") as f:
            f.write(enc(wire))
        if erl_dir:
            erl_lines.append("{%s, %s, %s}." % (name, erl_dir, erl_src))
        if py_dir:
            py_lines.append("    (%r, %r, %s)," % (name, py_dir, py_src))
    py_lines.append("]")
    with open(os.path.join(HERE, "vectors.eterm"), "w", encoding="utf-8") as f:
        f.write("\n".join(erl_lines) + "\n")
    with open(os.path.join(HERE, "vectors.py"), "w", encoding="utf-8") as f:
        f.write("\n".join(py_lines) + "\n")
    print("wrote %d vectors" % len(VECTORS))


if __name__ == "__main__":
    main()
