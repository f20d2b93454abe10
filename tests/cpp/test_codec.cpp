// The Python <-> msgpack codec beyond the shared vectors: every format
// boundary, big integers, nesting limits, unconvertible values, malformed
// and truncated input.
#include <random>
#include <sstream>

#include "helpers.hpp"

using namespace testing;
using pyport::ByteBuffer;
using pyport::EncodeResult;
using pyport::PyRef;

namespace {

Bytes encode_ok(PyObject* v) {
  ByteBuffer out;
  EncodeResult r = codec().encode(v, out);
  BOOST_REQUIRE_MESSAGE(r == EncodeResult::kOk, "encoding " << repr(v) << ": " << take_error());
  return Bytes(out.data(), out.data() + out.size());
}

// The exception text of a failed encode; the buffer must be unchanged.
std::string encode_error(PyObject* v) {
  ByteBuffer out;
  out.append("prefix", 6);
  EncodeResult r = codec().encode(v, out);
  BOOST_TEST((r == EncodeResult::kError));
  BOOST_TEST(out.size() == 6u);
  BOOST_TEST(std::string(reinterpret_cast<char*>(out.data()), out.size()) == "prefix");
  return take_error();
}

PyRef decode_ok(const Bytes& b) {
  PyRef v = codec().decode_exact(b.data(), b.size());
  BOOST_REQUIRE_MESSAGE(v, "decoding " << hex(b) << ": " << take_error());
  return v;
}

std::string decode_error(const Bytes& b) {
  PyRef v = codec().decode_exact(b.data(), b.size());
  BOOST_TEST(!v, "decoding " << hex(b) << " should fail but gave " << (v ? repr(v.get()) : ""));
  return take_error();
}

void round_trip(PyObject* v) {
  Bytes b = encode_ok(v);
  std::string why;
  BOOST_TEST(msgpack_c_parses(b.data(), b.size(), why), why);
  PyRef back = decode_ok(b);
  BOOST_TEST(same_value(back.get(), v, why), why);
}

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (auto& p : parts)
    out.insert(out.end(), p.begin(), p.end());
  return out;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// msgpack-c's own encoding of an integer (it also picks the shortest form).
Bytes msgpack_c_int(long long v, bool is_unsigned) {
  msgpack::sbuffer sb;
  if (is_unsigned) {
    msgpack::pack(sb, static_cast<unsigned long long>(v));
  } else {
    msgpack::pack(sb, v);
  }
  return Bytes(sb.data(), sb.data() + sb.size());
}

}  // namespace

BOOST_AUTO_TEST_SUITE(codec_values)

BOOST_AUTO_TEST_CASE(integers_at_every_format_boundary_match_msgpack_c) {
  const char* values[] = {"0",     "1",       "127",    "128",     "255",    "256",      "65535",
                          "65536", "2**32-1", "2**32",  "2**63-1", "-1",     "-32",      "-33",
                          "-128",  "-129",    "-32768", "-32769",  "-2**31", "-2**31-1", "-2**63"};
  for (const char* expr : values) {
    BOOST_TEST_CONTEXT(expr) {
      PyRef v = py(expr);
      long long n = PyLong_AsLongLong(v.get());
      BOOST_TEST(hex(encode_ok(v.get())) == hex(msgpack_c_int(n, false)));
      round_trip(v.get());
    }
  }
  for (const char* expr : {"2**63", "2**64-1"}) {
    BOOST_TEST_CONTEXT(expr) {
      PyRef v = py(expr);
      auto u = PyLong_AsUnsignedLongLong(v.get());
      BOOST_TEST(hex(encode_ok(v.get())) == hex(msgpack_c_int(static_cast<long long>(u), true)));
      round_trip(v.get());
    }
  }
}

// Elements of lists and maps take a shorter path for integers up to 32
// bits (codec.cpp, read_small_int): every boundary, inside containers,
// in shortest and longer forms, and truncated, must read as value() does.
BOOST_AUTO_TEST_CASE(integers_inside_containers_at_every_boundary) {
  PyRef list =
      py("[0, 1, 127, 128, 255, 256, 65535, 65536, 2**32-1, 2**32, 2**63-1, 2**64-1, -1, -32, -33,"
         " -128, -129, -32768, -32769, -2**31, -2**31-1, -2**63, 1.5, 'x', None, [300, -300]]");
  round_trip(list.get());
  PyRef dict =
      py("{i: -i for i in (0, 127, 128, 255, 256, 65535, 65536, 2**32-1, 2**32, -2**31-1)}");
  round_trip(dict.get());
  std::string why;
  // Longer forms than needed: a decoder accepts any valid form.
  BOOST_TEST(same_value(decode_ok({0x96, 0xcc, 0x05, 0xcd, 0x00, 0x05, 0xce, 0x00, 0x00, 0x00, 0x05,
                                   0xd0, 0x05, 0xd1, 0xff, 0xfb, 0xd2, 0x80, 0x00, 0x00, 0x00})
                            .get(),
                        py("[5, 5, 5, 5, -5, -2**31]").get(), why),
             why);
  BOOST_TEST(
      same_value(
          decode_ok({0x82, 0xce, 0xff, 0xff, 0xff, 0xff, 0xe0, 0xd1, 0x80, 0x00, 0xcc, 0xff}).get(),
          py("{2**32-1: -32, -32768: 255}").get(), why),
      why);
  // Truncated inside an array: the same message as for the value alone.
  for (Bytes b : {Bytes{0xcd, 0x01}, Bytes{0xce, 0x00, 0x00}, Bytes{0xd2, 0x00}, Bytes{0xcc},
                  Bytes{0xcf, 0, 0, 0, 0, 0, 0, 0}, Bytes{0xd3, 0xff}}) {
    BOOST_TEST_CONTEXT(hex(b)) {
      std::string alone = decode_error(b);
      std::string inside = decode_error(cat({{0x91}, b}));
      BOOST_TEST(contains(inside, "truncated"), inside);
      BOOST_TEST(alone.substr(0, alone.find(" at byte")) ==
                 inside.substr(0, inside.find(" at byte")));
    }
  }
}

// ---- runs of integers (codec.cpp: Encoder::int_run, Decoder::int_run) ----
// Lists, tuples and dicts write exact ints of up to two CPython digits
// straight from the digits, and read the integer forms of up to 32 bits in
// a loop of their own. Whatever takes those paths must come out byte for
// byte as each value alone does through the general path, and the runs
// must stop at anything else: bools, int subclasses, bigints, other types.

namespace {

// Every boundary of the msgpack forms and of CPython's digits (2**30 needs
// a second digit, 2**60 a third), and bigints past 64 bits.
const char* const kIntBoundaries[] = {
    "-32769",   "-32768",   "-129",   "-128",     "-33",    "-32",     "-1",       "0",
    "1",        "127",      "128",    "255",      "256",    "65535",   "65536",    "2**30-1",
    "2**30",    "-2**30+1", "-2**30", "2**31-1",  "2**31",  "-2**31",  "-2**31-1", "2**32-1",
    "2**32",    "2**60-1",  "2**60",  "-2**60+1", "-2**60", "2**63-1", "2**63",    "-2**63",
    "-2**63-1", "2**64-1",  "2**64",  "-2**64-1", "2**100", "-2**100"};

// The encoding of each element alone, concatenated.
Bytes each_alone(PyObject* seq) {
  PyRef fast = PyRef::steal(PySequence_Fast(seq, "not a sequence"));
  BOOST_REQUIRE(fast);
  Bytes out;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast.get()); ++i) {
    Bytes one = encode_ok(PySequence_Fast_GET_ITEM(fast.get(), i));
    out.insert(out.end(), one.begin(), one.end());
  }
  return out;
}

Bytes array_of(PyObject* seq) {
  ByteBuffer h;
  pyport::mp::write_array_header(h, uint32_t(PySequence_Size(seq)));
  return cat({Bytes(h.data(), h.data() + h.size()), each_alone(seq)});
}

Bytes tuple_of(PyObject* seq) {
  Bytes array = array_of(seq);
  ByteBuffer h;
  pyport::mp::write_ext_header(h, 2, uint32_t(array.size()));
  return cat({Bytes(h.data(), h.data() + h.size()), array});
}

// A dict's encoding from its items, in the dict's order.
Bytes map_of(PyObject* dict) {
  ByteBuffer h;
  pyport::mp::write_map_header(h, uint32_t(PyDict_GET_SIZE(dict)));
  Bytes out(h.data(), h.data() + h.size());
  Py_ssize_t pos = 0;
  PyObject *k, *v;
  while (PyDict_Next(dict, &pos, &k, &v)) {
    out = cat({out, encode_ok(k), encode_ok(v)});
  }
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(int_runs_encode_every_boundary_as_the_value_alone) {
  std::string all = "[";
  for (const char* expr : kIntBoundaries) {
    BOOST_TEST_CONTEXT(expr) {
      PyRef v = py(expr);
      int overflow = 0;
      long long n = PyLong_AsLongLongAndOverflow(v.get(), &overflow);
      if (overflow == 0) {
        BOOST_TEST(hex(encode_ok(v.get())) == hex(msgpack_c_int(n, false)));
      }
      // Each value in a list, a tuple and a dict of its own, then after a
      // short int (the run breaks at a bigint and starts again).
      PyRef list = py(std::string("[") + expr + ", 5, " + expr + "]");
      BOOST_TEST(hex(encode_ok(list.get())) == hex(array_of(list.get())));
      PyRef tuple = py(std::string("(") + expr + ", -7, " + expr + ")");
      BOOST_TEST(hex(encode_ok(tuple.get())) == hex(tuple_of(tuple.get())));
      PyRef dict = py(std::string("{") + expr + ": -(" + expr + "), 1: " + expr + "}");
      BOOST_TEST(hex(encode_ok(dict.get())) == hex(map_of(dict.get())));
      round_trip(list.get());
      round_trip(dict.get());
    }
    all += std::string(expr) + ", ";
  }
  PyRef list = py(all + "]");
  BOOST_TEST(hex(encode_ok(list.get())) == hex(array_of(list.get())));
  round_trip(list.get());
}

BOOST_AUTO_TEST_CASE(int_runs_stop_at_bools_int_subclasses_and_other_types) {
  py("exec('class IntSub(int): pass', globals())");
  py("exec('import enum; E = enum.IntEnum(\"E\", \"A B C\")', globals())");
  PyRef list =
      py("[1, True, 2, E(2), False, 300, IntSub(-70000), 2**40, IntSub(2**70), 'x', 3.5, None,"
         " -5, b'\\xff', [7, True], (8, False), 2**61, -32]");
  Bytes b = encode_ok(list.get());
  BOOST_TEST(hex(b) == hex(array_of(list.get())));
  // Bools stay bools; subclasses come back as plain ints.
  std::string why;
  BOOST_TEST(same_value(decode_ok(b).get(),
                        py("[1, True, 2, 2, False, 300, -70000, 2**40, 2**70, 'x', 3.5, None,"
                           " -5, b'\\xff', [7, True], (8, False), 2**61, -32]")
                            .get(),
                        why),
             why);
  BOOST_TEST(hex(encode_ok(py("(True, 1, E(3), 2, IntSub(5), False)").get())) ==
             "c7070296c301030205c2");
  PyRef dict = py("{True: 2, E(3): False, 7: IntSub(8), 9: 10, IntSub(11): E(1), 12: True}");
  Bytes d = encode_ok(dict.get());
  BOOST_TEST(hex(d) == hex(map_of(dict.get())));
  BOOST_TEST(hex(d) == "86c30203c20708090a0b010cc3");
  BOOST_TEST(same_value(decode_ok(d).get(),
                        py("{True: 2, 3: False, 7: 8, 9: 10, 11: 1, 12: True}").get(), why),
             why);
}

// Runs are written 512 items at a time: values around those edges, and a
// list longer than the decoder's cache of small int objects covers.
BOOST_AUTO_TEST_CASE(int_runs_across_their_chunks_and_nested) {
  for (const char* expr :
       {"list(range(-600, 600))", "[i if i % 512 else True for i in range(1600)]",
        "[i if i not in (511, 512, 1023, 1024) else 'x' for i in range(1100)]",
        "tuple(range(-40000, 40000, 7))", "[i * 99991 for i in range(-3000, 3000)]",
        "[2**i for i in range(70)] + [-2**i for i in range(70)]",
        "{i: -i for i in range(-1000, 1000)}",
        "{i: (i, [i, 2**62]) for i in range(0, 70000, 999)}"}) {
    BOOST_TEST_CONTEXT(expr) {
      PyRef v = py(expr);
      Bytes b = encode_ok(v.get());
      if (PyDict_Check(v.get())) {
        BOOST_TEST(hex(b) == hex(map_of(v.get())));
      } else if (PyTuple_Check(v.get())) {
        BOOST_TEST(hex(b) == hex(tuple_of(v.get())));
      } else {
        BOOST_TEST(hex(b) == hex(array_of(v.get())));
      }
      round_trip(v.get());
    }
  }
  round_trip(py("[[1, [2, [3, -40000, [True, [2**64, [[]]]]]]], (5, 70000, (6,)), {1: [2, 2**61]},"
                " [], (), {}]")
                 .get());
}

// Decoding: runs of every form up to 32 bits, broken by other values, and
// ints past the decoder's cache ([-32768, 65535]) made as new objects.
BOOST_AUTO_TEST_CASE(int_runs_decode_every_form_and_stop_at_other_values) {
  std::string why;
  BOOST_TEST(same_value(decode_ok({0x9d, 0x05, 0xe0, 0xcc, 0x80, 0xcd, 0xff, 0xff, 0xce, 0x00,
                                   0x01, 0x00, 0x00, 0xd0, 0x80, 0xd1, 0x80, 0x00, 0xd1, 0x7f,
                                   0xff, 0xd2, 0xff, 0xff, 0x7f, 0xff, 0xc3, 0xcf, 0,    0,
                                   0,    1,    0,    0,    0,    0,    0xc0, 0xd0, 0xdf})
                            .get(),
                        py("[5, -32, 128, 65535, 65536, -128, -32768, 32767, -32769, True,"
                           " 2**32, None, -33]")
                            .get(),
                        why),
             why);
  // The 64-bit forms, in runs too (uint64 and int64 holding any value).
  BOOST_TEST(
      same_value(decode_ok({0x96, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xd3, 0x80,
                            0,    0,    0,    0,    0,    0,    0,    0xcf, 0,    0,    0,    0,
                            0,    0,    0,    5,    0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                            0xff, 0x07, 0xd3, 0,    0,    0,    1,    0,    0,    0,    0})
                     .get(),
                 py("[2**64-1, -2**63, 5, -1, 7, 2**32]").get(), why),
      why);
  // Every value of int16 and uint16 range, and past it, in one array.
  PyRef wide = py("list(range(-70000, 70000))");
  Bytes b = encode_ok(wide.get());
  PyRef back = decode_ok(b);
  BOOST_TEST(same_value(back.get(), wide.get(), why), why);
  // Equal values decode to equal ints whether cached or not.
  BOOST_TEST(same_value(decode_ok(encode_ok(back.get())).get(), wide.get(), why), why);
  // Small int keys go in with their hash known (Decoder::set_item): lookups
  // with ints Python made find each one (-1 hashes to -2, not -1).
  PyRef keys =
      py("{-1: 'a', -2: 'b', 0: 'c', 1: 'd', -33: 0, 65535: 1, 65536: 2, -32769: 3, 2**31-1: 4,"
         " -2**31: 5, 2**32-1: 6, 2**40: 7, 2**64: 8, 'k': 9, 1.5: 10}");
  PyRef keys_back = decode_ok(encode_ok(keys.get()));
  BOOST_TEST(same_value(keys_back.get(), keys.get(), why), why);
  BOOST_TEST(PyObject_RichCompareBool(keys_back.get(), keys.get(), Py_EQ) == 1);
  BOOST_TEST(PyObject_RichCompareBool(keys.get(), keys_back.get(), Py_EQ) == 1);
  PyRef found =
      py("[k for k in (-1, -2, 0, 1, -33, 65535, 65536, -32769, 2**31-1, -2**31,"
         " 2**32-1, 2**40, 2**64, 'k', 1.5)]");
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(found.get()); ++i) {
    PyObject* k = PyList_GET_ITEM(found.get(), i);
    BOOST_TEST_CONTEXT(repr(k)) {
      BOOST_TEST(PyDict_GetItemWithError(keys_back.get(), k) != nullptr);
    }
  }
}

// Python code run while a list is encoded (a Term subclass's etf) may
// change it: the encoder re-reads its size and items and reports a change.
BOOST_AUTO_TEST_CASE(a_list_changed_while_encoded_is_an_error) {
  py("exec('class Clears(erlang.Term):\\n"
     "    etf = property(lambda self: (L.clear(), b\"\\\\x83a\\\\x01\")[1])\\n"
     "class Grows(erlang.Term):\\n"
     "    etf = property(lambda self: (L.extend(range(1000)), b\"\\\\x83a\\\\x01\")[1])\\n',"
     " globals())");
  py("globals().__setitem__('L', [1, 2, Clears.__new__(Clears), 3, 4] + list(range(600)))");
  BOOST_TEST(encode_error(py("L").get()) == "RuntimeError: list changed size during encoding");
  py("globals().__setitem__('L', list(range(600)) + [Grows.__new__(Grows), 5])");
  BOOST_TEST(encode_error(py("L").get()) == "RuntimeError: list changed size during encoding");
}

BOOST_AUTO_TEST_CASE(big_integers_use_ext3_outside_64_bits) {
  // sign byte + 9 magnitude bytes: ext 8 of 10 bytes
  BOOST_TEST(hex(encode_ok(py("2**64").get())) == "c70a0300010000000000000000");
  BOOST_TEST(hex(encode_ok(py("-2**63-1").get())) == "c70903018000000000000001");
  BOOST_TEST(hex(encode_ok(py("-2**64").get())) == "c70a0301010000000000000000");
  for (const char* expr : {"2**200", "-2**200", "2**64", "-2**63-1", "3**1000", "-(7**300)",
                           "2**(8*255)", "2**(8*70000)"}) {
    BOOST_TEST_CONTEXT(expr) {
      round_trip(py(expr).get());
    }
  }
  // A bigint that fits 64 bits is not canonical, but a decoder accepts it.
  std::string why;
  BOOST_TEST(same_value(decode_ok({0xd6, 0x03, 0x01, 0x00, 0x00, 0x05}).get(), py("-5").get(), why),
             why);
  BOOST_TEST(contains(decode_error({0xd5, 0x03, 0x02, 0x01}), "sign byte is not 0 or 1"));
  BOOST_TEST(decode_error({0xd4, 0x03, 0x00}) ==
             "ValueError: bigint needs a sign byte and a magnitude at byte 0");
  // Leading zero bytes in the magnitude are accepted.
  BOOST_TEST(same_value(decode_ok({0xd6, 0x03, 0x00, 0x00, 0x00, 0x07}).get(), py("7").get(), why),
             why);
}

BOOST_AUTO_TEST_CASE(bool_before_int_and_int_subclasses_as_int) {
  BOOST_TEST(hex(encode_ok(Py_True)) == "c3");
  BOOST_TEST(hex(encode_ok(Py_False)) == "c2");
  PyRef e = py("__import__('enum').IntEnum('E', 'A B')(2)");
  BOOST_TEST(hex(encode_ok(e.get())) == "02");
}

BOOST_AUTO_TEST_CASE(floats_are_always_float64) {
  BOOST_TEST(hex(encode_ok(py("1.0").get())) == "cb3ff0000000000000");
  for (const char* expr : {"0.0", "-0.0", "1e308", "5e-324", "float('inf')", "float('nan')"}) {
    BOOST_TEST_CONTEXT(expr) {
      round_trip(py(expr).get());
    }
  }
  // float32 from other encoders is accepted.
  std::string why;
  BOOST_TEST(same_value(decode_ok({0xca, 0x3f, 0xc0, 0x00, 0x00}).get(), py("1.5").get(), why),
             why);
}

BOOST_AUTO_TEST_CASE(string_headers_at_every_boundary) {
  struct Case {
    int len;
    const char* header;
  } cases[] = {{0, "a0"},       {31, "bf"},        {32, "d920"},         {255, "d9ff"},
               {256, "da0100"}, {65535, "daffff"}, {65536, "db00010000"}};
  for (auto& c : cases) {
    BOOST_TEST_CONTEXT("str of " << c.len) {
      PyRef s = py("'s' * " + std::to_string(c.len));
      Bytes b = encode_ok(s.get());
      BOOST_TEST(hex(b.data(), b.size() - size_t(c.len)) == c.header);
      round_trip(s.get());
    }
  }
  struct Case bins[] = {
      {0, "c400"}, {255, "c4ff"}, {256, "c50100"}, {65535, "c5ffff"}, {65536, "c600010000"}};
  for (auto& c : bins) {
    BOOST_TEST_CONTEXT("bytes of " << c.len) {
      PyRef s = py("b'\\xff' * " + std::to_string(c.len));
      Bytes b = encode_ok(s.get());
      BOOST_TEST(hex(b.data(), b.size() - size_t(c.len)) == c.header);
      if (c.len) round_trip(s.get());  // empty bin decodes as '' (valid UTF-8)
    }
  }
}

BOOST_AUTO_TEST_CASE(text_and_binary_decoding) {
  std::string why;
  // bin holding UTF-8 is str, anything else bytes; str is str.
  BOOST_TEST(same_value(decode_ok({0xc4, 0x02, 0xc3, 0xa9}).get(), py("'\\xe9'").get(), why), why);
  BOOST_TEST(same_value(decode_ok({0xc4, 0x02, 0xc3, 0x28}).get(), py("b'\\xc3('").get(), why),
             why);
  // Surrogates and overlong forms are not valid UTF-8 for Python either.
  BOOST_TEST(same_value(decode_ok({0xc4, 0x03, 0xed, 0xa0, 0x80}).get(),
                        py("b'\\xed\\xa0\\x80'").get(), why),
             why);
  BOOST_TEST(same_value(decode_ok({0xc4, 0x02, 0xc0, 0xaf}).get(), py("b'\\xc0\\xaf'").get(), why),
             why);
  BOOST_TEST(
      same_value(decode_ok({0xa4, 0xf0, 0x9f, 0x98, 0x80}).get(), py("'\\U0001F600'").get(), why),
      why);
  // A str must be UTF-8: arbitrary bytes travel as bin.
  std::string err = decode_error({0xa2, 0xc3, 0x28});
  BOOST_TEST(err == "ValueError: str is not valid UTF-8 (arbitrary bytes go in a bin) at byte 0");
  BOOST_TEST(contains(decode_error({0xd9, 0x01, 0xff}), "str is not valid UTF-8"));
  // ext 4 is always bytes, even when it is valid UTF-8.
  BOOST_TEST(same_value(decode_ok({0xd5, 0x04, 0x61, 0x62}).get(), py("b'ab'").get(), why), why);
  // Non-shortest forms are accepted.
  BOOST_TEST(same_value(decode_ok({0xd9, 0x01, 0x78}).get(), py("'x'").get(), why), why);
  BOOST_TEST(same_value(decode_ok({0xcf, 0, 0, 0, 0, 0, 0, 0, 1}).get(), py("1").get(), why), why);
  // A str that cannot be UTF-8 encoded is refused, naming the problem.
  BOOST_TEST(contains(encode_error(py("'\\ud800'").get()), "UnicodeEncodeError"));
}

BOOST_AUTO_TEST_CASE(a_megabyte_of_bytes_both_ways) {
  PyRef big = py("bytes(range(256)) * 4096");
  Bytes b = encode_ok(big.get());
  BOOST_TEST(b.size() == 5u + (1u << 20));
  BOOST_TEST(hex(b.data(), 5) == "c600100000");
  PyRef back = decode_ok(b);
  BOOST_TEST(PyObject_RichCompareBool(back.get(), big.get(), Py_EQ) == 1);
  PyRef text = py("'x' * (1 << 20)");
  PyRef text_back = decode_ok(encode_ok(text.get()));
  BOOST_TEST(PyUnicode_CheckExact(text_back.get()));
  BOOST_TEST(PyObject_RichCompareBool(text_back.get(), text.get(), Py_EQ) == 1);
}

BOOST_AUTO_TEST_CASE(bytes_like_objects_are_bin) {
  BOOST_TEST(hex(encode_ok(py("bytearray(b'ab')").get())) == "c4026162");
  BOOST_TEST(hex(encode_ok(py("memoryview(b'abc')[1:]").get())) == "c4026263");
  BOOST_TEST(hex(encode_ok(py("memoryview(__import__('array').array('H', [1]))").get())) ==
             "c4020100");
  // Strided views are copied out in order.
  BOOST_TEST(hex(encode_ok(py("memoryview(b'abcd')[::2]").get())) == "c4026163");
}

BOOST_AUTO_TEST_CASE(atoms_are_ext1_and_decoded_atoms_are_cached) {
  PyRef ok = py("erlang.Atom('ok')");
  Bytes b = encode_ok(ok.get());
  BOOST_TEST(hex(b) == "d5016f6b");
  PyRef a1 = decode_ok(b), a2 = decode_ok(b);
  BOOST_TEST(a1.get() == a2.get());  // the same object from the cache
  BOOST_TEST(Py_TYPE(a1.get()) == reinterpret_cast<PyTypeObject*>(codec().atom_type()));
  // A str subclass that is not an Atom is a str.
  PyRef sub = py("type('S', (str,), {})('hi')");
  BOOST_TEST(hex(encode_ok(sub.get())) == "a26869");
  BOOST_TEST(contains(decode_error({0xd5, 0x01, 0xff, 0xfe}), "atom name is not valid UTF-8"));
}

BOOST_AUTO_TEST_CASE(tuples_use_the_shortest_ext_header_for_their_payload) {
  // ext 2 around the array: the header depends on the payload's length,
  // known only after encoding it. Payload lengths 1..70000 cover fixext,
  // ext8, ext16 and ext32.
  for (int n : {0, 1, 2, 3, 7, 14, 15, 16, 100, 253, 254, 255, 256, 21844, 21845, 21846, 70000}) {
    BOOST_TEST_CONTEXT("tuple of " << n << " small ints") {
      PyRef list = py("[1] * " + std::to_string(n));
      PyRef tuple = PyRef::steal(PyList_AsTuple(list.get()));
      Bytes array = encode_ok(list.get());
      ByteBuffer header;
      pyport::mp::write_ext_header(header, 2, uint32_t(array.size()));
      Bytes expected(header.data(), header.data() + header.size());
      expected.insert(expected.end(), array.begin(), array.end());
      BOOST_TEST(hex(encode_ok(tuple.get())) == hex(expected));
      round_trip(tuple.get());
    }
  }
  round_trip(py("((1, ()), [(2,)], {'k': (erlang.Atom('a'), b'\\xff' * 70000)})").get());
  BOOST_TEST(hex(encode_ok(py("collections.namedtuple('P', 'x y')(1, 2)").get())) ==
             hex(encode_ok(py("(1, 2)").get())));
  // The payload must be exactly one array.
  BOOST_TEST(contains(decode_error({0xd5, 0x02, 0x91, 0x01, 0xc0}), "trailing"));
  BOOST_TEST(contains(decode_error({0xd5, 0x02, 0x01, 0x01}), "expected an array (tuple payload)"));
  BOOST_TEST(contains(decode_error({0xd5, 0x02, 0x92, 0x01}), "truncated"));
}

BOOST_AUTO_TEST_CASE(containers) {
  for (const char* expr : {"[]", "[1, [2, [3, []]]]", "{}", "{'a': {erlang.Atom('b'): [1, {}]}}",
                           "{1: 'x', (1, 2): None, erlang.Atom('k'): 2.5}", "[None, True, False]",
                           "list(range(70000))", "{i: i for i in range(70000)}"}) {
    BOOST_TEST_CONTEXT(expr) {
      round_trip(py(expr).get());
    }
  }
  // Sets become arrays; dict and list subclasses become maps and arrays.
  BOOST_TEST(hex(encode_ok(py("{1, 2}").get())) == "920102");
  BOOST_TEST(hex(encode_ok(py("frozenset()").get())) == "90");
  BOOST_TEST(hex(encode_ok(py("collections.OrderedDict(a=1)").get())) == "81a16101");
  BOOST_TEST(hex(encode_ok(py("collections.defaultdict(int, a=1)").get())) == "81a16101");
  BOOST_TEST(hex(encode_ok(py("type('L', (list,), {})([1])").get())) == "9101");
  // A key Python cannot hash is malformed input for Python.
  std::string err = decode_error({0x81, 0x91, 0x01, 0x02});
  BOOST_TEST(contains(err, "map key of type list is unhashable at byte 1"), err);
}

BOOST_AUTO_TEST_CASE(erlang_terms_by_etf_tag) {
  Bytes pid = read_file(source_path("proto/vectors/pid.msgpack"));
  Bytes ref = read_file(source_path("proto/vectors/ref.msgpack"));
  BOOST_TEST(std::string(Py_TYPE(decode_ok(pid).get())->tp_name) == "Pid");
  BOOST_TEST(std::string(Py_TYPE(decode_ok(ref).get())->tp_name) == "Ref");
  // A port (ETF tag 89 V4_PORT_EXT) or a fun is an opaque Term.
  Bytes port = {0xc7, 0x06, 0x05, 131, 89, 100, 0, 1, 'n'};
  PyRef term = decode_ok(port);
  BOOST_TEST(std::string(Py_TYPE(term.get())->tp_name) == "Term");
  BOOST_TEST(hex(encode_ok(term.get())) == hex(port));
  // The old PID_EXT and REF_EXT tags too.
  BOOST_TEST(std::string(Py_TYPE(decode_ok({0xd5, 0x05, 131, 103}).get())->tp_name) == "Pid");
  BOOST_TEST(std::string(Py_TYPE(decode_ok({0xd5, 0x05, 131, 101}).get())->tp_name) == "Ref");
  BOOST_TEST(std::string(Py_TYPE(decode_ok({0xd5, 0x05, 131, 114}).get())->tp_name) == "Ref");
  // A fun (NEW_FUN_EXT) and an external fun (EXPORT_EXT) are Terms too.
  BOOST_TEST(std::string(Py_TYPE(decode_ok({0xd5, 0x05, 131, 112}).get())->tp_name) == "Term");
  BOOST_TEST(std::string(Py_TYPE(decode_ok({0xd5, 0x05, 131, 113}).get())->tp_name) == "Term");
  // Any other term, or a compressed one, is refused.
  std::string err = decode_error({0xd5, 0x05, 131, 97});
  BOOST_TEST(err ==
             "ValueError: term payload is not a pid, reference, port or fun (ETF tag 97) "
             "at byte 0");
  BOOST_TEST(contains(decode_error({0xd5, 0x05, 131, 80}), "(ETF tag 80)"));
  err = decode_error({0xd5, 0x05, 130, 88});
  BOOST_TEST(contains(err, "not external term format"), err);
  BOOST_TEST(contains(decode_error({0xd4, 0x05, 131}), "not external term format"));
}

BOOST_AUTO_TEST_CASE(unconvertible_values_name_their_type) {
  std::string err = encode_error(py("object()").get());
  BOOST_TEST(err == "TypeError: cannot convert object to an Erlang term");
  err = encode_error(py("[1, 2, {'k': (3, complex(1))}]").get());
  BOOST_TEST(err == "TypeError: cannot convert complex to an Erlang term");
  err = encode_error(py("{'f': len}").get());
  BOOST_TEST(err == "TypeError: cannot convert builtin_function_or_method to an Erlang term");
  err = encode_error(py("(x for x in [])").get());
  BOOST_TEST(err == "TypeError: cannot convert generator to an Erlang term");
}

BOOST_AUTO_TEST_CASE(numbers_and_buffers_by_protocol) {
  // __index__ and __float__ objects are numbers; buffers are bytes, in C
  // order even when strided; a 0-dimensional buffer is a scalar.
  BOOST_TEST(encode_ok(py("decimal.Decimal('0.5')").get()) == encode_ok(py("0.5").get()));
  BOOST_TEST(encode_ok(py("type('I', (), {'__index__': lambda s: 2**70})()").get()) ==
             encode_ok(py("2**70").get()));
  BOOST_TEST(encode_ok(py("memoryview(b'abcdef')[::2]").get()) == encode_ok(py("b'ace'").get()));
  BOOST_TEST(encode_ok(py("memoryview(b'abcdefgh').cast('i', [2])[:1]").get()) ==
             encode_ok(py("b'abcd'").get()));
  BOOST_TEST(encode_ok(py("__import__('array').array('b', [1, 2])").get()) ==
             encode_ok(py("b'\\x01\\x02'").get()));
  std::string err = encode_error(py("type('E', (), {'__index__': lambda s: 1 // 0})()").get());
  BOOST_TEST(err == "ZeroDivisionError: integer division or modulo by zero");
}

BOOST_AUTO_TEST_CASE(kept_objects_by_id) {
  // Ext 6 names an object of erlang._objects's table by its 8-byte id.
  PyRef table = py("__import__('erlang._objects', fromlist=['_table'])._table");
  PyRef obj = py("[1, 2]");
  PyRef key = PyRef::steal(PyLong_FromLong(77));
  BOOST_REQUIRE(PyDict_SetItem(table.get(), key.get(), obj.get()) == 0);
  PyRef found = decode_ok({0xd7, 0x06, 0, 0, 0, 0, 0, 0, 0, 77});
  BOOST_TEST(found.get() == obj.get());
  BOOST_REQUIRE(PyDict_DelItem(table.get(), key.get()) == 0);
  std::string err = decode_error({0xd7, 0x06, 0, 0, 0, 0, 0, 0, 0, 77});
  BOOST_TEST(contains(err, "StaleRefError: object 77 is not held by this worker"), err);
  err = decode_error({0xd6, 0x06, 0, 0, 0, 77});
  BOOST_TEST(contains(err, "object payload is not an 8-byte id"), err);
}

BOOST_AUTO_TEST_CASE(nesting_is_limited_to_512_levels_both_ways) {
  // `depth` containers, each holding the next (innermost: an empty one).
  auto nested = [](const char* wrap, const char* innermost, int depth) {
    return py("__import__('functools').reduce(lambda acc, _: " + std::string(wrap) + ", range(" +
              std::to_string(depth - 1) + "), " + innermost + ")");
  };
  // 512 containers deep: fine, both ways, for each kind of container.
  round_trip(nested("[acc]", "[]", 512).get());
  round_trip(nested("(acc,)", "()", 512).get());
  round_trip(nested("{1: acc}", "{}", 512).get());
  // 513: refused with a clear error.
  std::string err = encode_error(nested("[acc]", "[]", 513).get());
  BOOST_TEST(err == "TypeError: cannot convert a value nested deeper than 512 levels");
  BOOST_TEST(contains(encode_error(nested("(acc,)", "()", 513).get()), "deeper than 512"));
  BOOST_TEST(contains(encode_error(nested("{1: acc}", "{}", 513).get()), "deeper than 512"));
  PyRef cyclic = py("(lambda l: (l.append(l), l)[1])([])");
  BOOST_TEST(contains(encode_error(cyclic.get()), "deeper than 512"));
  PyList_SetSlice(cyclic.get(), 0, 1, nullptr);  // break the cycle

  Bytes deep(513, 0x91);
  deep.push_back(0x01);
  err = decode_error(deep);
  BOOST_TEST(err == "ValueError: nesting deeper than 512 levels at byte 512");
  Bytes ok(deep.begin() + 1, deep.end());
  decode_ok(ok);
  Bytes tuples = {0x01};
  for (int i = 0; i < 513; ++i) {
    Bytes payload = cat({{0x91}, tuples});
    ByteBuffer h;
    pyport::mp::write_ext_header(h, 2, uint32_t(payload.size()));
    tuples = cat({Bytes(h.data(), h.data() + h.size()), payload});
  }
  BOOST_TEST(contains(decode_error(tuples), "nesting deeper than 512 levels"));
}

BOOST_AUTO_TEST_CASE(the_encode_limit_fails_early_and_restores_the_buffer) {
  PyRef v = py("[b'x' * 1000, 'y' * 1000]");
  Bytes full = encode_ok(v.get());
  ByteBuffer out;
  BOOST_TEST((codec().encode(v.get(), out, full.size()) == EncodeResult::kOk));
  BOOST_TEST(out.size() == full.size());
  out.clear();
  out.append("ab", 2);
  BOOST_TEST((codec().encode(v.get(), out, full.size() - 1) == EncodeResult::kTooLarge));
  BOOST_TEST(out.size() == 2u);
  BOOST_TEST(!PyErr_Occurred());
  // A value far over the limit is refused before its payload is copied.
  PyRef big = py("b'z' * (64 << 20)");
  out.clear();
  BOOST_TEST((codec().encode(big.get(), out, 1 << 20) == EncodeResult::kTooLarge));
  BOOST_TEST(out.capacity() < size_t(2 << 20));
}

BOOST_AUTO_TEST_CASE(malformed_input_is_named_with_its_offset) {
  BOOST_TEST(decode_error({0xc1}) == "ValueError: invalid type byte 0xc1 at byte 0");
  BOOST_TEST(decode_error({0x92, 0x01, 0xc1}) == "ValueError: invalid type byte 0xc1 at byte 2");
  BOOST_TEST(decode_error({0xd4, 0x09, 0x00}) == "ValueError: unknown ext type 9 at byte 0");
  BOOST_TEST(decode_error({0xd4, 0xff, 0x00}) == "ValueError: unknown ext type -1 at byte 0");
  BOOST_TEST(decode_error({0x01, 0x02}) ==
             "ValueError: 1 trailing bytes after the value at byte 1");
  BOOST_TEST(decode_error({}) ==
             "ValueError: truncated input: value needs 1 byte, 0 remain at byte 0");
  // A header announcing more elements than bytes left is refused before
  // anything is allocated for them.
  std::string err = decode_error({0xdd, 0xff, 0xff, 0xff, 0xff});
  BOOST_TEST(err ==
             "ValueError: truncated input: array of 4294967295 elements has only 0 bytes "
             "left at byte 0");
  err = decode_error({0xdf, 0x7f, 0xff, 0xff, 0xff, 0x01});
  BOOST_TEST(contains(err, "map of 2147483647 entries"), err);
  err = decode_error({0xc6, 0xff, 0xff, 0xff, 0xff, 0x00});
  BOOST_TEST(err ==
             "ValueError: truncated input: string needs 4294967295 bytes, 1 remain at byte 5");
}

BOOST_AUTO_TEST_CASE(every_truncation_fails_cleanly) {
  std::vector<Bytes> inputs;
  for (const char* name : {"int_2_200", "int_u64_max", "float_pi", "str_40", "bin_300",
                           "tuple_nested", "map_nested", "pid", "list_mixed", "atom_utf8"}) {
    inputs.push_back(read_file(source_path(std::string("proto/vectors/") + name + ".msgpack")));
  }
  inputs.push_back(encode_ok(py("{'a': [1, 2.5, (erlang.Atom('x'), b'\\xff' * 300)], "
                                "'b': {3: 2**100, 4: 'h\\xe9llo'}}")
                                 .get()));
  for (const Bytes& full : inputs) {
    decode_ok(full);
    for (size_t n = 0; n < full.size(); ++n) {
      BOOST_TEST_CONTEXT(hex(full) << " cut to " << n << " bytes") {
        Bytes cut(full.begin(), full.begin() + long(n));
        std::string err = decode_error(cut);
        BOOST_TEST(contains(err, "ValueError: truncated input"), err);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(garbage_never_crashes) {
  std::mt19937 rng(20240611);
  int failures = 0, values = 0;
  for (int i = 0; i < 20000; ++i) {
    Bytes b(rng() % 64);
    for (auto& byte : b)
      byte = uint8_t(rng());
    PyRef v = codec().decode_exact(b.data(), b.size());
    if (v) {
      ++values;
      ByteBuffer out;  // whatever decodes also encodes: every decoded type maps back
      BOOST_TEST((codec().encode(v.get(), out) == EncodeResult::kOk), take_error());
    } else {
      ++failures;
      std::string err = take_error();
      BOOST_TEST(contains(err, " at byte "), err);
    }
  }
  BOOST_TEST(failures > 0);
  BOOST_TEST(values > 0);
}

BOOST_AUTO_TEST_SUITE_END()
