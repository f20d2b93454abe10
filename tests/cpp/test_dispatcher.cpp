// Dispatch of whole frames, in-process: requests are built with msgpack-c
// (independent of the worker's writer) and every answer is parsed with it.
#include <atomic>
#include <chrono>
#include <map>
#include <sstream>
#include <thread>
#include <tuple>

#include "dispatcher.hpp"
#include "frames.hpp"
#include "helpers.hpp"

using namespace testing;
using pyport::ByteBuffer;
using pyport::Dispatcher;
using pyport::PyRef;

namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;
using NoKwargs = std::map<std::string, int>;
const msgpack::type::nil_t kNil{};

template <typename... T>
Bytes pack(const T&... fields) {
  msgpack::sbuffer sb;
  msgpack::pack(sb, std::make_tuple(fields...));
  return Bytes(sb.data(), sb.data() + sb.size());
}

// One value as msgpack-c writes it.
template <typename T>
Bytes one(const T& v) {
  msgpack::sbuffer sb;
  msgpack::pack(sb, v);
  return Bytes(sb.data(), sb.data() + sb.size());
}

// Concatenated pieces: hand-made values spliced between packed ones.
Bytes raw_frame(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (auto& p : parts)
    out.insert(out.end(), p.begin(), p.end());
  return out;
}

struct Reply {
  std::shared_ptr<msgpack::object_handle> oh;
  const msgpack::object& field(size_t i) const { return oh->get().via.array.ptr[i]; }
  size_t fields() const { return oh->get().via.array.size; }
  int kind() const { return field(0).as<int>(); }
  uint64_t id() const { return field(1).as<uint64_t>(); }
  std::string text(size_t i) const {
    std::ostringstream s;
    s << field(i);
    return s.str();
  }
  std::string str(size_t i) const { return field(i).as<std::string>(); }
};

// Splits out into frames; each must parse with msgpack-c as one array.
std::vector<Reply> split(const ByteBuffer& out) {
  std::vector<Reply> replies;
  size_t pos = 0;
  while (pos < out.size()) {
    BOOST_REQUIRE(out.size() - pos >= 4);
    size_t n = pyport::mp::load_be32(out.data() + pos);
    BOOST_REQUIRE(out.size() - pos - 4 >= n);
    std::string why;
    BOOST_REQUIRE_MESSAGE(msgpack_c_parses(out.data() + pos + 4, n, why), why);
    auto oh = std::make_shared<msgpack::object_handle>(
        msgpack::unpack(reinterpret_cast<const char*>(out.data() + pos + 4), n));
    BOOST_REQUIRE(oh->get().type == msgpack::type::ARRAY);
    replies.push_back({oh});
    pos += 4 + n;
  }
  return replies;
}

std::vector<Reply> run(Dispatcher& d, const Bytes& payload) {
  ByteBuffer out;
  d.handle_frame(payload.data(), payload.size(), out);
  BOOST_TEST(!PyErr_Occurred());
  return split(out);
}

// The one answer to payload, which must be a RESULT for id.
Reply result(Dispatcher& d, const Bytes& payload, uint64_t id) {
  auto replies = run(d, payload);
  BOOST_REQUIRE_EQUAL(replies.size(), 1u);
  const Reply& r = replies[0];
  BOOST_REQUIRE_MESSAGE(r.kind() == 16, "expected a RESULT, got " << r.oh->get());
  BOOST_TEST(r.id() == id);
  BOOST_TEST(r.fields() == 3u);
  return r;
}

// The one answer to payload, which must be an ERROR for id of this type.
Reply error(Dispatcher& d, const Bytes& payload, uint64_t id, const std::string& type) {
  auto replies = run(d, payload);
  BOOST_REQUIRE_EQUAL(replies.size(), 1u);
  const Reply& r = replies[0];
  BOOST_REQUIRE_MESSAGE(r.kind() == 17, "expected an ERROR, got " << r.oh->get());
  BOOST_TEST(r.fields() == 5u);
  BOOST_TEST(r.id() == id);
  BOOST_TEST(r.str(2) == type);
  return r;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

constexpr size_t kMax = 64 << 20;

}  // namespace

BOOST_AUTO_TEST_SUITE(dispatcher)

BOOST_AUTO_TEST_CASE(with_frames_keep_or_convert_the_value) {
  Dispatcher d(codec(), kMax);
  Bytes call = pack(1, 5, "builtins", "list", std::make_tuple(std::make_tuple(1, 2)), NoKwargs{});
  Bytes keep = pack(
      13, 5, std::map<std::string, int>{{"keep", 900}},
      msgpack::type::raw_ref(reinterpret_cast<const char*>(call.data()), uint32_t(call.size())));
  // msgpack-c packs raw_ref as str; the worker takes str or bin.
  Reply r = result(d, keep, 5);
  BOOST_TEST(r.field(2).via.array.ptr[0].as<int>() == 900);
  PyRef count = py("__import__('erlang._objects', fromlist=['count']).count()");
  BOOST_TEST(PyLong_AsLong(count.get()) == 1);
  // The kept list as an argument (ext 6 id 900).
  Bytes len =
      raw_frame({{0x96, 0x01, 0x06, 0xa8},
                 Bytes{'b', 'u', 'i', 'l', 't', 'i', 'n', 's'},
                 {0xa3, 'l', 'e', 'n', 0x91, 0xd7, 0x06, 0, 0, 0, 0, 0, 0, 0x03, 0x84, 0x80}});
  r = result(d, len, 6);
  BOOST_TEST(r.field(2).as<int>() == 2);
  py("__import__('erlang._objects', fromlist=['release']).release(900)");
  r = error(d, len, 6, "StaleRefError");
  // str_fallback converts what the codec cannot.
  Bytes obj = pack(3, 7, "object()", kNil, 0);
  error(d, obj, 7, "TypeError");
  Bytes fallback =
      pack(13, 7, std::map<std::string, bool>{{"str_fallback", true}},
           msgpack::type::raw_ref(reinterpret_cast<const char*>(obj.data()), uint32_t(obj.size())));
  r = result(d, fallback, 7);
  BOOST_TEST(contains(r.str(2), "<object object at"));
  // The inner frame must be a CALL or EVAL with the same id.
  Bytes other =
      pack(13, 8, NoKwargs{},
           msgpack::type::raw_ref(reinterpret_cast<const char*>(obj.data()), uint32_t(obj.size())));
  r = error(d, other, 8, "FrameError");
  BOOST_TEST(contains(r.str(3), "same Id"));
}

BOOST_AUTO_TEST_CASE(call_returns_the_result) {
  Dispatcher d(codec(), kMax);
  Reply r = result(d, pack(1, 1, "math", "sqrt", std::vector<double>{16.0}, NoKwargs{}), 1);
  BOOST_TEST(r.field(2).as<double>() == 4.0);
  // Kwargs, dotted modules, dotted attribute paths.
  r = result(d,
             pack(1, 2, "builtins", "int", std::make_tuple("ff"),
                  std::map<std::string, int>{{"base", 16}}),
             2);
  BOOST_TEST(r.field(2).as<int>() == 255);
  r = result(d, pack(1, 3, "os.path", "join", std::make_tuple("a", "b"), NoKwargs{}), 3);
  BOOST_TEST(r.str(2) == "a/b");
  r = result(d, pack(1, 4, "builtins", "str.upper", std::make_tuple("abc"), NoKwargs{}), 4);
  BOOST_TEST(r.str(2) == "ABC");
  // Ids use the whole 64-bit range.
  r = result(d,
             pack(1, 18446744073709551615ull, "builtins", "abs", std::make_tuple(-3), NoKwargs{}),
             18446744073709551615ull);
  BOOST_TEST(r.field(2).as<int>() == 3);
}

BOOST_AUTO_TEST_CASE(big_integers_atoms_and_tuples_cross_both_ways) {
  Dispatcher d(codec(), kMax);
  // abs(-(2**100)): a bigint (ext 3) in and out.
  Bytes neg = {0xc7, 0x0e, 0x03, 0x01, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  Reply r = result(
      d, raw_frame({{0x96, 0x01, 0x05}, one("builtins"), one("abs"), {0x91}, neg, {0x80}}), 5);
  BOOST_REQUIRE(r.field(2).type == msgpack::type::EXT);
  BOOST_TEST(r.field(2).via.ext.type() == 3);
  Bytes body(r.field(2).via.ext.data(), r.field(2).via.ext.data() + r.field(2).via.ext.size);
  BOOST_TEST(hex(body) == "0010000000000000000000000000");

  // An atom and a tuple in Locals arrive as erlang.Atom and tuple, and go
  // back as ext 1 and ext 2.
  r = result(d,
             raw_frame({{0x95, 0x03, 0x06},
                        one("(type(a).__name__, type(t).__name__, a, t)"),
                        {0x82, 0xa1, 'a', 0xd5, 0x01, 'o', 'k', 0xa1, 't', 0xd5, 0x02, 0x91, 0x07},
                        {0x00}}),
             6);
  BOOST_REQUIRE(r.field(2).type == msgpack::type::EXT);
  BOOST_TEST(r.field(2).via.ext.type() == 2);
  Bytes tuple(r.field(2).via.ext.data(), r.field(2).via.ext.data() + r.field(2).via.ext.size);
  BOOST_TEST(
      hex(tuple) ==
      hex(raw_frame(
          {{0x94}, one("Atom"), one("tuple"), {0xd5, 0x01, 'o', 'k', 0xd5, 0x02, 0x91, 0x07}})));
}

BOOST_AUTO_TEST_CASE(python_exceptions_become_error_frames) {
  Dispatcher d(codec(), kMax);
  Reply r =
      error(d, pack(1, 7, "builtins", "int", std::make_tuple("x"), NoKwargs{}), 7, "ValueError");
  BOOST_TEST(r.str(3) == "invalid literal for int() with base 10: 'x'");
  // Raised by C code called from C: no frames, only the exception line.
  BOOST_TEST(r.str(4) == "ValueError: invalid literal for int() with base 10: 'x'\n");
  // Raised in Python code: the traceback shows its frames.
  r = error(d, pack(1, 6, "json", "loads", std::make_tuple("{"), NoKwargs{}), 6, "JSONDecodeError");
  BOOST_TEST(r.str(3) ==
             "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)");
  BOOST_TEST(contains(r.str(4), "Traceback (most recent call last)"));
  BOOST_TEST(contains(r.str(4), "json/decoder.py"));

  r = error(d, pack(1, 8, "no_such_module_xyz", "f", std::make_tuple(), NoKwargs{}), 8,
            "ModuleNotFoundError");
  BOOST_TEST(r.str(3) == "No module named 'no_such_module_xyz'");
  r = error(d, pack(1, 9, "math", "no_such_fn", std::make_tuple(), NoKwargs{}), 9,
            "AttributeError");
  BOOST_TEST(r.str(3) == "module 'math' has no attribute 'no_such_fn'");
  r = error(d, pack(1, 10, "builtins", "str.nope", std::make_tuple(), NoKwargs{}), 10,
            "AttributeError");
  BOOST_TEST(contains(r.str(3), "'nope'"));
  // A result with no Erlang form: TypeError for that id, nothing else written.
  r = error(d, pack(1, 11, "builtins", "object", std::make_tuple(), NoKwargs{}), 11, "TypeError");
  BOOST_TEST(r.str(3) == "cannot convert object to an Erlang term");
  r = error(d, pack(1, 12, "builtins", "complex", std::make_tuple(1.5), NoKwargs{}), 12,
            "TypeError");
  BOOST_TEST(r.str(3) == "cannot convert complex to an Erlang term");
  // BaseExceptions are answered too; the worker does not exit on SystemExit.
  r = error(d, pack(1, 13, "sys", "exit", std::make_tuple(3), NoKwargs{}), 13, "SystemExit");
  BOOST_TEST(r.str(3) == "3");
  BOOST_TEST(!d.shutdown_requested());
}

BOOST_AUTO_TEST_CASE(eval_and_exec_share_namespaces_by_number) {
  Dispatcher d(codec(), kMax);
  Reply r = result(d, pack(3, 1, "1 + 2", kNil, 0), 1);
  BOOST_TEST(r.field(2).as<int>() == 3);
  r = result(d, pack(3, 2, "x * y", std::map<std::string, int>{{"x", 6}, {"y", 7}}, 0), 2);
  BOOST_TEST(r.field(2).as<int>() == 42);
  r = result(d, pack(4, 3, "z = 5\ndef f(n):\n    return n + z\n", 1), 3);
  BOOST_TEST(r.field(2).is_nil());
  r = result(d, pack(3, 4, "f(1)", kNil, 1), 4);
  BOOST_TEST(r.field(2).as<int>() == 6);
  r = error(d, pack(3, 5, "z", kNil, 2), 5, "NameError");
  BOOST_TEST(r.str(3) == "name 'z' is not defined");
  r = error(d, pack(3, 6, "z", kNil, 0), 6, "NameError");
  // Locals shadow globals and do not leak into them.
  r = result(d, pack(3, 7, "z", std::map<std::string, int>{{"z", 9}}, 1), 7);
  BOOST_TEST(r.field(2).as<int>() == 9);
  r = result(d, pack(3, 8, "z", kNil, 1), 8);
  BOOST_TEST(r.field(2).as<int>() == 5);
  // Builtins are there; __name__ names the namespace's module, which is
  // in sys.modules (erlang._namespaces) and has erlang bound.
  r = result(d, pack(3, 9, "len(__name__)", kNil, 77), 9);
  BOOST_TEST(r.field(2).as<int>() == 16);  // __pyport_ns_77__
  r = result(d, pack(3, 90, "__import__('sys').modules[__name__].__dict__ is globals()", kNil, 77),
             90);
  BOOST_TEST(r.field(2).as<bool>() == true);
  r = result(d, pack(3, 91, "erlang.__name__", kNil, 77), 91);
  BOOST_TEST(r.str(2) == "erlang");
  // Namespace ids use the full 64-bit range.
  r = result(d, pack(4, 10, "big = 1", 18446744073709551615ull), 10);
  r = result(d, pack(3, 11, "big", kNil, 18446744073709551615ull), 11);
  BOOST_TEST(r.field(2).as<int>() == 1);
  r = error(d, pack(4, 12, "def broken(:\n", 0), 12, "SyntaxError");
  BOOST_TEST(contains(r.str(4), "SyntaxError"));
  r = error(d, pack(3, 13, "x = 1", kNil, 0), 13, "SyntaxError");  // a statement
  r = error(d, pack(4, 14, "raise KeyError('k')", 0), 14, "KeyError");
  BOOST_TEST(r.str(3) == "'k'");
  BOOST_TEST(contains(r.str(4), "File \"<exec>\", line 1"));
}

BOOST_AUTO_TEST_CASE(locals_are_seen_by_nested_scopes_and_never_by_globals) {
  Dispatcher d(codec(), kMax);
  using IntMap = std::map<std::string, int>;
  Reply r = result(d, pack(3, 1, "[x * i for i in range(3)]", IntMap{{"x", 2}}, 5), 1);
  BOOST_TEST(r.text(2) == "[0,2,4]");
  r = result(d, pack(3, 2, "(lambda: x + y)()", IntMap{{"x", 2}, {"y", 3}}, 5), 2);
  BOOST_TEST(r.field(2).as<int>() == 5);
  r = result(d, pack(3, 3, "sum(x for _ in range(4))", IntMap{{"x", 3}}, 5), 3);
  BOOST_TEST(r.field(2).as<int>() == 12);
  r = result(d, pack(3, 4, "{k: x for k in 'ab'}", IntMap{{"x", 1}}, 5), 4);
  BOOST_TEST(r.text(2) == "{\"a\":1,\"b\":1}");
  // Globals of the namespace are still seen, and locals shadow them.
  result(d, pack(4, 5, "g = 10\nx = 100", 5), 5);
  r = result(d, pack(3, 6, "[g + x for _ in range(2)]", IntMap{{"x", 1}}, 5), 6);
  BOOST_TEST(r.text(2) == "[11,11]");
  r = result(d, pack(3, 7, "x", kNil, 5), 7);
  BOOST_TEST(r.field(2).as<int>() == 100);
  // Nothing leaks into globals, walrus included.
  result(d, pack(3, 8, "(w := y + 1)", IntMap{{"y", 1}}, 6), 8);
  error(d, pack(3, 9, "y", kNil, 6), 9, "NameError");
  error(d, pack(3, 10, "w", kNil, 6), 10, "NameError");
  // Keys that cannot be names (a keyword, not an identifier) are ignored.
  r = result(d, pack(3, 11, "sorted(locals())", IntMap{{"class", 1}, {"a-b", 2}, {"ok", 3}}, 6),
             11);
  BOOST_TEST(r.text(2) == "[\"ok\"]");
  // Syntax errors name the user's text, not the wrapper.
  r = error(d, pack(3, 12, "x +", IntMap{{"x", 1}}, 6), 12, "SyntaxError");
  BOOST_TEST(!contains(r.str(4), "lambda"));
  // The same code with other local names compiles anew.
  r = result(d, pack(3, 13, "[v for _ in range(1)]", IntMap{{"v", 7}}, 6), 13);
  BOOST_TEST(r.text(2) == "[7]");
  r = error(d, pack(3, 14, "[v for _ in range(1)]", IntMap{{"u", 7}}, 6), 14, "NameError");
}

BOOST_AUTO_TEST_CASE(calls_see_reloaded_and_monkeypatched_functions) {
  Dispatcher d(codec(), kMax);
  result(d,
         pack(4, 1,
              "import sys, types\nm = types.ModuleType('pp_patch')\n"
              "m.f = lambda: 1\nsys.modules['pp_patch'] = m\n",
              0),
         1);
  Reply r = result(d, pack(1, 2, "pp_patch", "f", std::make_tuple(), NoKwargs{}), 2);
  BOOST_TEST(r.field(2).as<int>() == 1);
  result(d, pack(4, 3, "m.f = lambda: 2", 0), 3);
  r = result(d, pack(1, 4, "pp_patch", "f", std::make_tuple(), NoKwargs{}), 4);
  BOOST_TEST(r.field(2).as<int>() == 2);
  // A new module object under the same name is found too.
  result(d,
         pack(4, 5,
              "m2 = types.ModuleType('pp_patch')\nm2.f = lambda: 3\n"
              "sys.modules['pp_patch'] = m2",
              0),
         5);
  r = result(d, pack(1, 6, "pp_patch", "f", std::make_tuple(), NoKwargs{}), 6);
  BOOST_TEST(r.field(2).as<int>() == 3);
  result(d, pack(4, 7, "del sys.modules['pp_patch']", 0), 7);
  error(d, pack(1, 8, "pp_patch", "f", std::make_tuple(), NoKwargs{}), 8, "ModuleNotFoundError");
}

BOOST_AUTO_TEST_CASE(control_operations) {
  Dispatcher d(codec(), kMax);
  // gc: the number of objects collected, for all generations or one.
  result(d, pack(4, 1, "class C: pass\nc = C(); c.me = c; del c", 3), 1);
  Reply r = result(d, pack(11, 2, "gc", kNil), 2);
  BOOST_TEST(r.field(2).as<int>() >= 1);
  r = result(d, pack(11, 3, "gc", 0), 3);
  BOOST_TEST(r.field(2).type == msgpack::type::POSITIVE_INTEGER);
  r = error(d, pack(11, 4, "gc", 7), 4, "ValueError");
  BOOST_TEST(contains(r.str(3), "0, 1 or 2"));
  // memory_stats: a map with the RSS and how many namespaces exist.
  r = result(d, pack(11, 5, "memory_stats", kNil), 5);
  auto stats = r.field(2).as<std::map<std::string, msgpack::object>>();
  BOOST_TEST(stats.at("rss_bytes").as<uint64_t>() > 1000000u);
  BOOST_TEST(stats.at("max_rss_bytes").as<uint64_t>() > 0u);
  BOOST_TEST(stats.at("namespaces").as<int>() == 1);
  BOOST_TEST(stats.count("gc_count") == 1u);
  BOOST_TEST(d.namespace_count() == 1u);
  // drop_namespace frees the globals: true once, then false.
  r = result(d, pack(11, 6, "drop_namespace", 3), 6);
  BOOST_TEST(r.field(2).as<bool>() == true);
  r = result(d, pack(11, 7, "drop_namespace", 3), 7);
  BOOST_TEST(r.field(2).as<bool>() == false);
  BOOST_TEST(d.namespace_count() == 0u);
  error(d, pack(3, 8, "C", kNil, 3), 8, "NameError");
  r = error(d, pack(11, 9, "drop_namespace", "x"), 9, "FrameError");
  BOOST_TEST(contains(r.str(3), "namespace number"));
  r = error(d, pack(11, 10, "drop_namespace", -1), 10, "FrameError");
  // reload: of a module never imported, and of one that cannot be re-run.
  r = result(d, pack(11, 11, "reload", "pp_never_imported"), 11);
  BOOST_TEST(r.str(2) == "not_loaded");
  r = result(d, pack(11, 12, "reload", "sys"), 12);
  BOOST_TEST(r.str(2) == "needs_restart");
  r = result(d, pack(11, 13, "reload", "json"), 13);
  BOOST_TEST(r.str(2) == "reloaded");
  r = error(d, pack(11, 14, "reload", 5), 14, "FrameError");
  r = error(d, pack(11, 15, "no_such_op", kNil), 15, "FrameError");
  BOOST_TEST(r.str(3) == "unknown CONTROL operation 'no_such_op'");
  r = error(d, pack(11, 16, "gc"), 16, "FrameError");
  BOOST_TEST(r.str(3) == "CONTROL frame has 3 elements, expected 4");
  BOOST_TEST(run(d, pack(11, 0, "gc", kNil)).size() == 1u);  // id 0: a FrameError
}

BOOST_AUTO_TEST_CASE(interrupt_of_a_finished_request_is_ignored) {
  Dispatcher d(codec(), kMax);
  BOOST_TEST(run(d, pack(8, 42)).empty());
  error(d, pack(8, 0), 0, "FrameError");
  error(d, pack(8, 42, 1), 42, "FrameError");
  Reply r = result(d, pack(3, 1, "1", kNil, 0), 1);
  BOOST_TEST(r.field(2).as<int>() == 1);
}

BOOST_AUTO_TEST_CASE(locals_and_kwargs_keys_become_exact_str) {
  Dispatcher d(codec(), kMax);
  // Locals {a (an atom) => 1}: the name is a plain str inside Python.
  Reply r = result(d,
                   raw_frame({{0x95, 0x03, 0x01},
                              one("type([*locals()][0]).__name__"),
                              {0x81, 0xd4, 0x01, 'a', 0x01},
                              {0x00}}),
                   1);
  BOOST_TEST(r.str(2) == "str");
  // Kwargs {base (an atom) => 16} works as a keyword.
  r = result(d,
             raw_frame({{0x96, 0x01, 0x02},
                        one("builtins"),
                        one("int"),
                        {0x91},
                        one("ff"),
                        {0x81, 0xd6, 0x01, 'b', 'a', 's', 'e', 0x10}}),
             2);
  BOOST_TEST(r.field(2).as<int>() == 255);
}

BOOST_AUTO_TEST_CASE(cast_answers_nothing_and_reports_failures_on_stderr) {
  Dispatcher d(codec(), kMax);
  PyRef io = py("__import__('io').StringIO()");
  PyObject* saved = PySys_GetObject("stderr");
  PyRef keep = PyRef::borrow(saved);
  PySys_SetObject("stderr", io.get());
  auto replies =
      run(d, pack(2, 5, "sys", "path.append", std::make_tuple("cast-marker"), NoKwargs{}));
  BOOST_TEST(replies.empty());
  replies = run(d, pack(2, 6, "json", "loads", std::make_tuple("{"), NoKwargs{}));
  BOOST_TEST(replies.empty());
  replies = run(d, pack(2, 7, "no_such_module_xyz", "f", std::make_tuple(), NoKwargs{}));
  BOOST_TEST(replies.empty());
  PySys_SetObject("stderr", keep.get());
  PyRef text = PyRef::steal(PyObject_CallMethod(io.get(), "getvalue", nullptr));
  std::string err = PyUnicode_AsUTF8(text.get());
  BOOST_TEST(contains(err, "pyport: cast to json.loads failed:\nTraceback"), err);
  BOOST_TEST(contains(err, "JSONDecodeError: Expecting property name"), err);
  BOOST_TEST(contains(err, "cast to no_such_module_xyz.f failed"), err);
  Reply r = result(d, pack(3, 8, "__import__('sys').path.count('cast-marker')", kNil, 0), 8);
  BOOST_TEST(r.field(2).as<int>() == 1);
  py("__import__('sys').path.remove('cast-marker')");
}

BOOST_AUTO_TEST_CASE(malformed_frames_get_frame_errors_naming_the_problem) {
  Dispatcher d(codec(), kMax);
  struct Case {
    Bytes payload;
    uint64_t id;
    std::string message;
  } cases[] = {
      {{}, 0, "empty frame"},
      {{0x05}, 0, "expected an array (frame), found int at byte 0"},
      {{0xc1}, 0, "expected an array (frame), found the unused type byte 0xc1 at byte 0"},
      {{0x91, 0x01}, 0, "frame has 1 elements, needs Kind and Id"},
      // A bad Kind with a readable Id is answered for that Id.
      {{0x92, 0xa1, 'x', 0x01}, 1, "expected an unsigned integer (Kind), found str at byte 1"},
      {{0x92, 0xff, 0x02}, 2, "Kind is negative at byte 1"},
      {{0x92, 0x92, 0x01, 0xc1, 0x03},
       0,
       "expected an unsigned integer (Kind), found array at byte 1"},
      {{0x92, 0x01, 0xff}, 0, "Id is negative at byte 2"},
      {{0x92, 0x01}, 0, "truncated input: Id needs 1 byte, 0 remain at byte 2"},
      {pack(99, 7), 7, "unknown frame kind 99"},
      {pack(0, 7), 7, "unknown frame kind 0"},
      {pack(16, 7, 1), 7, "unknown frame kind 16"},
      {pack(14, 7, 1), 7, "LENT frame has 3 elements, expected 5"},
      {pack(13, 7, 1), 7, "WITH frame has 3 elements, expected 4"},
      // A BATCH reaches the dispatcher only when the reader could not take it apart.
      {pack(12, 7, 1), 0,
       "malformed BATCH frame: expected [12, 0, Frames], Frames an array of bins each holding one "
       "frame that is not a BATCH"},
      {pack(1, 7, "math"), 7, "CALL frame has 3 elements, expected 6"},
      {pack(3, 7, "1", kNil), 7, "EVAL frame has 4 elements, expected 5"},
      {pack(15, 0, 1), 0, "SHUTDOWN frame has 3 elements, expected 2"},
      {pack(15, 7), 7, "SHUTDOWN must have Id 0"},
      {pack(1, 0, "math", "sqrt", std::make_tuple(4), NoKwargs{}), 0,
       "CALL frame needs a non-zero Id"},
      {pack(2, 0, "math", "sqrt", std::make_tuple(4), NoKwargs{}), 0,
       "CAST frame needs a non-zero Id"},
      {pack(3, 0, "1", kNil, 0), 0, "EVAL frame needs a non-zero Id"},
      {pack(4, 0, "x = 1", 0), 0, "EXEC frame needs a non-zero Id"},
      {raw_frame({{0x96, 0x01, 0x07, 0xc4, 0x01, 0xff, 0xa1, 'f', 0x90, 0x80}}), 7,
       "Module is not valid UTF-8 at byte 3"},
      {raw_frame({{0x94, 0x04, 0x07, 0xa2, 0xc3, 0x28, 0x00}}), 7,
       "Code is not valid UTF-8 at byte 3"},
      {raw_frame({{0x96, 0x01, 0x07, 0xa1, 'm', 0xa1, 'f', 0x91, 0xa1, 0xff, 0x80}}), 7,
       "in Args: str is not valid UTF-8 (arbitrary bytes go in a bin) at byte 8"},
      {raw_frame({{0x96, 0x01, 0x07, 0xa1, 'm', 0xa1, 'f', 0x91, 0xd4, 0x03, 0x00, 0x80}}), 7,
       "in Args: bigint needs a sign byte and a magnitude at byte 8"},
      {pack(1, 7, 5, "f", std::make_tuple(), NoKwargs{}), 7,
       "expected a string (Module), found int at byte 3"},
      {pack(1, 7, "m", "f", 5, NoKwargs{}), 7, "expected an array (Args), found int at byte 7"},
      {pack(1, 7, "m", "f", std::make_tuple(), 5), 7,
       "expected a map (Kwargs), found int at byte 8"},
      {pack(1, 7, "m", "f", std::make_tuple(), std::map<int, int>{{1, 2}}), 7,
       "Kwargs key at byte 9 is not a string"},
      {raw_frame({{0x96, 0x01, 0x07, 0xa1, 'm', 0xa1, 'f', 0x92, 0x01, 0xc1, 0x80}}), 7,
       "in Args: invalid type byte 0xc1 at byte 9"},
      {raw_frame({{0x96, 0x01, 0x07, 0xa1, 'm', 0xa1, 'f', 0x91, 0x81, 0x91, 0x01, 0x02, 0x80}}), 7,
       "in Args: map key of type list is unhashable at byte 9"},
      {raw_frame({{0x96, 0x01, 0x07, 0xa1, 'm', 0xa1, 'f', 0x90, 0x80, 0xc0}}), 7,
       "trailing bytes after the CALL frame"},
      {raw_frame(
           {{0x96, 0x01, 0x07, 0xa1, 'm', 0xa1, 'f', 0x90, 0x81, 0xa1, 'k', 0xd4, 0x09, 0x00}}),
       7, "in Kwargs: unknown ext type 9 at byte 11"},
      {raw_frame({{0x96, 0x01, 0x07, 0xa1, 'm', 0xa1, 'f', 0xdd, 0x7f, 0xff, 0xff, 0xff}}), 7,
       "in Args: truncated input: array of 2147483647 elements has only 0 bytes left at byte 7"},
      {pack(3, 7, "1", 5, 0), 7, "expected a map (Locals), found int at byte 5"},
      {pack(3, 7, "1", kNil, -1), 7, "Namespace is negative at byte 6"},
      {pack(4, 7, "x = 1", "ns"), 7,
       "expected an unsigned integer (Namespace), found str at byte 9"},
  };
  for (auto& c : cases) {
    BOOST_TEST_CONTEXT(hex(c.payload)) {
      Reply r = error(d, c.payload, c.id, "FrameError");
      BOOST_TEST(r.str(3) == c.message);
      BOOST_TEST(r.str(4) == "");
    }
  }
  // Nothing else was affected.
  Reply r = result(d, pack(3, 8, "40 + 2", kNil, 0), 8);
  BOOST_TEST(r.field(2).as<int>() == 42);
}

BOOST_AUTO_TEST_CASE(nesting_counts_from_the_frame_fields) {
  // The Args array is one level, so an argument may hold 511 more.
  Dispatcher d(codec(), kMax);
  // builtins.list(arg) where arg is `levels` arrays around an empty one.
  auto call_with = [](int levels) {
    Bytes p = raw_frame({{0x96, 0x01, 0x07}, one("builtins"), one("list"), {0x91}});
    p.insert(p.end(), size_t(levels), 0x91);
    p.insert(p.end(), {0x90, 0x80});
    return p;
  };
  Reply r = result(d, call_with(510), 7);
  Reply e = error(d, call_with(511), 7, "FrameError");
  // The innermost array: the argument starts at byte 18.
  BOOST_TEST(e.str(3) == "in Args: nesting deeper than 512 levels at byte 529");
  // Results may be 512 levels deep: the RESULT frame's array is not counted.
  r = result(
      d, pack(3, 8, "__import__('functools').reduce(lambda a, _: [a], range(511), [])", kNil, 0),
      8);
  e = error(d,
            pack(3, 9, "__import__('functools').reduce(lambda a, _: [a], range(512), [])", kNil, 0),
            9, "TypeError");
  BOOST_TEST(e.str(3) == "cannot convert a value nested deeper than 512 levels");
}

BOOST_AUTO_TEST_CASE(answers_that_do_not_fit_become_frame_too_large) {
  const size_t max = 1000;
  Dispatcher d(codec(), max);
  Reply r = error(d, pack(3, 1, "'x' * 2000", kNil, 0), 1, "FrameTooLarge");
  BOOST_TEST(r.str(3) == "the result does not fit in max_frame_size (1000 bytes)");
  // The largest result that fits is sent; one byte more is not. The
  // payload [16, 2, <str>] takes 1 + 1 + 1 + 3 (str16 header) + n bytes.
  ByteBuffer out;
  Bytes fits = pack(3, 2, "'y' * 994", kNil, 0);
  d.handle_frame(fits.data(), fits.size(), out);
  BOOST_TEST(out.size() == 4 + 1000u);
  auto replies = split(out);
  BOOST_TEST(replies.at(0).kind() == 16);
  error(d, pack(3, 3, "'y' * 995", kNil, 0), 3, "FrameTooLarge");
  // An exception with a huge message still fits, cut.
  r = error(d, pack(4, 4, "raise ValueError('m' * 5000)", 0), 4, "ValueError");
  BOOST_TEST(contains(r.str(3), "[truncated]"));
  // A frame announced too large for this worker.
  out.clear();
  d.frame_too_large(42, 5000, out);
  replies = split(out);
  BOOST_REQUIRE_EQUAL(replies.size(), 1u);
  BOOST_TEST(replies[0].id() == 42u);
  BOOST_TEST(replies[0].str(2) == "FrameTooLarge");
  BOOST_TEST(replies[0].str(3) == "frame of 5000 bytes exceeds max_frame_size (1000 bytes)");
}

BOOST_AUTO_TEST_CASE(answers_append_to_the_same_buffer_in_order) {
  Dispatcher d(codec(), kMax);
  ByteBuffer out;
  for (int i = 1; i <= 3; ++i) {
    Bytes p = pack(3, i, "1 + " + std::to_string(i), kNil, 0);
    d.handle_frame(p.data(), p.size(), out);
  }
  Bytes bad = {0x05};
  d.handle_frame(bad.data(), bad.size(), out);
  auto replies = split(out);
  BOOST_REQUIRE_EQUAL(replies.size(), 4u);
  for (int i = 0; i < 3; ++i) {
    BOOST_TEST(replies[size_t(i)].id() == uint64_t(i + 1));
    BOOST_TEST(replies[size_t(i)].field(2).as<int>() == i + 2);
  }
  BOOST_TEST(replies[3].kind() == 17);
}

BOOST_AUTO_TEST_CASE(compiled_code_cache_stays_correct_past_its_bound) {
  Dispatcher d(codec(), kMax);
  for (size_t i = 0; i < Dispatcher::kMaxCachedCode + 100; ++i) {
    Reply r = result(d, pack(3, i + 1, std::to_string(i) + " * 2", kNil, 0), i + 1);
    BOOST_TEST(r.field(2).as<size_t>() == i * 2);
  }
  for (size_t i = 0; i < 10; ++i) {
    Reply r = result(d, pack(3, 1, std::to_string(i) + " * 2", kNil, 0), 1);
    BOOST_TEST(r.field(2).as<size_t>() == i * 2);
  }
}

BOOST_AUTO_TEST_CASE(shutdown_is_noted_and_unanswered) {
  Dispatcher d(codec(), kMax);
  BOOST_TEST(!d.shutdown_requested());
  BOOST_TEST(run(d, pack(15, 0)).empty());
  BOOST_TEST(d.shutdown_requested());
}

BOOST_AUTO_TEST_SUITE_END()

// INTERRUPT as the worker delivers it: another thread asks, the request
// running on this thread gets KeyboardInterrupt, and no other request does.
BOOST_AUTO_TEST_SUITE(interrupts)

namespace {

// The worker installs Python's SIGINT handler; this test process does not.
void python_handles_sigint() {
  py("__import__('signal').signal(2, __import__('signal').default_int_handler)");
}

// Calls interrupts.interrupt(id) from another thread after `ms`.
std::thread interrupt_later(pyport::Interrupts& interrupts, uint64_t id, int ms) {
  return std::thread([&interrupts, id, ms] {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    interrupts.interrupt(id);
  });
}

}  // namespace

BOOST_AUTO_TEST_CASE(running_code_and_blocking_calls_are_interrupted) {
  python_handles_sigint();
  pyport::Interrupts interrupts;
  Dispatcher d(codec(), kMax, &interrupts);
  auto t0 = std::chrono::steady_clock::now();
  std::thread t = interrupt_later(interrupts, 1, 200);
  Reply r = error(d, pack(4, 1, "while True: pass", 0), 1, "KeyboardInterrupt");
  t.join();
  t = interrupt_later(interrupts, 2, 200);
  r = error(d, pack(1, 2, "time", "sleep", std::make_tuple(30), NoKwargs{}), 2,
            "KeyboardInterrupt");
  t.join();
  t = interrupt_later(interrupts, 3, 200);
  r = error(d, pack(3, 3, "__import__('time').sleep(30)", kNil, 0), 3, "KeyboardInterrupt");
  t.join();
  // Far below the 30 s the calls would take.
  BOOST_TEST((std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20)));
  // Code may catch it and answer normally.
  t = interrupt_later(interrupts, 4, 200);
  r = result(d,
             pack(4, 4,
                  "try:\n    __import__('time').sleep(30)\nexcept KeyboardInterrupt:\n"
                  "    caught = 1\n",
                  7),
             4);
  t.join();
  r = result(d, pack(3, 5, "caught", kNil, 7), 5);
  BOOST_TEST(r.field(2).as<int>() == 1);
}

BOOST_AUTO_TEST_CASE(an_interrupt_before_the_start_answers_without_running) {
  python_handles_sigint();
  pyport::Interrupts interrupts;
  Dispatcher d(codec(), kMax, &interrupts);
  interrupts.interrupt(11);
  Reply r = error(d, pack(4, 11, "ran = True", 8), 11, "KeyboardInterrupt");
  BOOST_TEST(r.str(3) == "request 11 was interrupted before it started");
  error(d, pack(3, 12, "ran", kNil, 8), 12, "NameError");
  // Once: the same id again runs.
  result(d, pack(4, 11, "ran = True", 8), 11);
  // A cast interrupted before it starts does nothing, and answers nothing.
  interrupts.interrupt(13);
  BOOST_TEST(run(d, pack(2, 13, "builtins", "print", std::make_tuple("x"), NoKwargs{})).empty());
}

BOOST_AUTO_TEST_CASE(an_interrupt_never_reaches_another_request) {
  python_handles_sigint();
  pyport::Interrupts interrupts;
  Dispatcher d(codec(), kMax, &interrupts);
  // Odd requests are interrupted at random points, often as they finish;
  // even requests must always complete.
  std::atomic<uint64_t> current{0};
  std::atomic<bool> stop{false};
  std::thread spammer([&] {
    while (!stop) {
      uint64_t id = current.load();
      if (id % 2 == 1) interrupts.interrupt(id);
      std::this_thread::yield();
    }
  });
  int interrupted = 0;
  for (uint64_t id = 1; id <= 3000; ++id) {
    current = id;
    auto replies = run(d, pack(3, id, "sum(range(20000))", kNil, 0));
    BOOST_REQUIRE_EQUAL(replies.size(), 1u);
    if (id % 2 == 0) {
      BOOST_REQUIRE_MESSAGE(replies[0].kind() == 16,
                            "request " << id << ": " << replies[0].oh->get());
      BOOST_TEST(replies[0].field(2).as<int>() == 199990000);
    } else if (replies[0].kind() == 17) {
      BOOST_TEST(replies[0].str(2) == "KeyboardInterrupt");
      ++interrupted;
    }
  }
  stop = true;
  spammer.join();
  BOOST_TEST_MESSAGE(interrupted << " of 1500 odd requests interrupted");
  BOOST_TEST(!PyErr_Occurred());
}

BOOST_AUTO_TEST_SUITE_END()
