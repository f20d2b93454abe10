// Framing: cutting the input stream into frames (including oversized ones
// that must be skipped without desynchronising), and the frames the worker
// builds itself.
#include <cstring>

#include "frames.hpp"
#include "helpers.hpp"
#include "msgpack_rw.hpp"
#include "utf8.hpp"

using namespace testing;
using pyport::ByteBuffer;
using pyport::FrameAssembler;

namespace {

struct Seen {
  bool oversized;
  Bytes payload;  // kFrame
  size_t size;
  uint64_t id;
};

// Feeds `stream` to the assembler in reads of at most `chunk` bytes, as the
// loop does, and collects the events. Also records the most bytes the
// assembler ever held.
std::vector<Seen> feed(FrameAssembler& a, const Bytes& stream, size_t chunk,
                       size_t* max_buffered = nullptr) {
  std::vector<Seen> seen;
  size_t pos = 0;
  while (pos < stream.size()) {
    auto [p, room] = a.prepare();
    BOOST_REQUIRE(room > 0);
    size_t n = std::min({room, chunk, stream.size() - pos});
    std::memcpy(p, stream.data() + pos, n);
    a.commit(n);
    pos += n;
    if (max_buffered) *max_buffered = std::max(*max_buffered, a.buffered());
    FrameAssembler::Event ev;
    while (a.next(ev)) {
      if (ev.type == FrameAssembler::Event::kFrame) {
        seen.push_back({false, Bytes(ev.payload, ev.payload + ev.size), ev.size, 0});
      } else {
        seen.push_back({true, {}, ev.size, ev.id});
      }
    }
    a.compact();
  }
  return seen;
}

Bytes framed(const Bytes& payload) {
  Bytes out(4);
  pyport::mp::store_be32(out.data(), uint32_t(payload.size()));
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

// A CALL payload [1, id, "m", "f", [<filler>], {}] of about `size` bytes.
Bytes call_payload(uint64_t id, size_t size) {
  ByteBuffer b;
  pyport::mp::write_array_header(b, 6);
  pyport::mp::write_uint(b, 1);
  pyport::mp::write_uint(b, id);
  pyport::mp::write_str(b, "m");
  pyport::mp::write_str(b, "f");
  pyport::mp::write_array_header(b, 1);
  // Filler making the payload exactly `size` bytes: what is left after the
  // map header, less the header of the bin that holds it.
  size_t left = size > b.size() + 1 ? size - b.size() - 1 : 0;
  size_t filler = 0;
  if (left >= 2 && left - 2 <= 0xff) {
    filler = left - 2;
  } else if (left >= 3 && left - 3 <= 0xffff) {
    filler = left - 3;
  } else if (left >= 5) {
    filler = left - 5;
  }
  pyport::mp::write_bin_header(b, uint32_t(filler));
  std::memset(b.grow(filler), 'x', filler);
  pyport::mp::write_map_header(b, 0);
  return Bytes(b.data(), b.data() + b.size());
}

msgpack::object_handle parse(const uint8_t* p, size_t n) {
  std::string why;
  BOOST_REQUIRE_MESSAGE(msgpack_c_parses(p, n, why), why);
  return msgpack::unpack(reinterpret_cast<const char*>(p), n);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(frames)

BOOST_AUTO_TEST_CASE(frames_come_out_whole_whatever_the_read_sizes) {
  std::vector<Bytes> payloads = {call_payload(1, 10),    {},     call_payload(2, 300),
                                 call_payload(3, 70000), {0x90}, call_payload(4, 5)};
  Bytes stream;
  for (auto& p : payloads) {
    Bytes f = framed(p);
    stream.insert(stream.end(), f.begin(), f.end());
  }
  for (size_t chunk : {size_t(1), size_t(3), size_t(4), size_t(7), size_t(4096), stream.size()}) {
    BOOST_TEST_CONTEXT("reads of " << chunk << " bytes") {
      FrameAssembler a(1 << 20);
      auto seen = feed(a, stream, chunk);
      BOOST_REQUIRE_EQUAL(seen.size(), payloads.size());
      for (size_t i = 0; i < seen.size(); ++i) {
        BOOST_TEST(!seen[i].oversized);
        BOOST_TEST(seen[i].payload == payloads[i]);
      }
      BOOST_TEST(a.buffered() == 0u);
    }
  }
}

BOOST_AUTO_TEST_CASE(a_big_frame_gets_room_for_all_of_it_at_once) {
  FrameAssembler a(64 << 20);
  Bytes header(4);
  pyport::mp::store_be32(header.data(), 10 << 20);
  auto [p, room] = a.prepare();
  std::memcpy(p, header.data(), 4);
  a.commit(4);
  FrameAssembler::Event ev;
  BOOST_TEST(!a.next(ev));
  a.compact();
  auto [p2, room2] = a.prepare();
  (void)p2;
  (void)room;
  BOOST_TEST(room2 >= size_t(10 << 20));
}

BOOST_AUTO_TEST_CASE(an_oversized_frame_is_reported_with_its_id_and_skipped_unbuffered) {
  const size_t max = 1024;
  Bytes big = call_payload(0xdeadbeefcafeull, 300000);
  Bytes stream = framed(call_payload(7, 20));
  for (auto& part : {framed(big), framed(call_payload(8, 1024)), framed(call_payload(9, 1025))}) {
    stream.insert(stream.end(), part.begin(), part.end());
  }
  for (size_t chunk : {size_t(1), size_t(5), size_t(1000), size_t(65536), stream.size()}) {
    BOOST_TEST_CONTEXT("reads of " << chunk << " bytes") {
      FrameAssembler a(max);
      size_t most = 0;
      auto seen = feed(a, stream, chunk, &most);
      BOOST_REQUIRE_EQUAL(seen.size(), 4u);
      BOOST_TEST(!seen[0].oversized);
      BOOST_TEST(seen[1].oversized);
      BOOST_TEST(seen[1].id == 0xdeadbeefcafeull);
      BOOST_TEST(seen[1].size == big.size());
      BOOST_TEST(!seen[2].oversized);  // exactly the maximum is fine
      BOOST_TEST(seen[2].size == 1024u);
      BOOST_TEST(seen[3].oversized);  // one byte more is not
      BOOST_TEST(seen[3].id == 9u);
      // The 300 KB frame was never held: at most one read's worth was.
      BOOST_TEST(most <= std::max(chunk, size_t(2 * max)) + 64);
    }
  }
}

BOOST_AUTO_TEST_CASE(an_oversized_frame_without_a_readable_id_gets_id_0) {
  Bytes junk(5000, 0xc1);
  Bytes stream = framed(junk);
  Bytes ok = framed({0x92, 0x01, 0x05});
  stream.insert(stream.end(), ok.begin(), ok.end());
  FrameAssembler a(256);
  auto seen = feed(a, stream, 100);
  BOOST_REQUIRE_EQUAL(seen.size(), 2u);
  BOOST_TEST(seen[0].oversized);
  BOOST_TEST(seen[0].id == 0u);
  BOOST_TEST(seen[1].payload == Bytes({0x92, 0x01, 0x05}));
}

BOOST_AUTO_TEST_CASE(recover_id_reads_kind_and_id_only) {
  uint64_t id = 0;
  Bytes p = call_payload(123456789, 10);
  BOOST_TEST(pyport::recover_id(p.data(), 8, id));
  BOOST_TEST(id == 123456789u);
  BOOST_TEST(!pyport::recover_id(p.data(), 3, id));  // cut inside the id
  Bytes not_array = {0x01, 0x02};
  BOOST_TEST(!pyport::recover_id(not_array.data(), not_array.size(), id));
  Bytes negative = {0x92, 0x01, 0xff};
  id = 5;
  BOOST_TEST(!pyport::recover_id(negative.data(), negative.size(), id));
  BOOST_TEST(id == 5u);  // untouched on failure
  // The kind may be any value: it is stepped over.
  // Kind {"k" => [nil], <<0>> => 1.0}, then Id 256.
  Bytes odd_kind = {0x93, 0x82, 0xa1, 'k', 0x91, 0xc0, 0xc4, 0x01, 0x00, 0xcb, 1,
                    2,    3,    4,    5,   6,    7,    8,    0xcd, 0x01, 0x00};
  BOOST_TEST(pyport::recover_id(odd_kind.data(), odd_kind.size(), id));
  BOOST_TEST(id == 256u);
  BOOST_TEST(!pyport::recover_id(odd_kind.data(), 12, id));  // cut inside the kind
}

BOOST_AUTO_TEST_CASE(hello_frame) {
  ByteBuffer out;
  pyport::write_hello_frame(out, "3.11.2", 4242, 1 << 20, {"call", "log"});
  BOOST_REQUIRE(out.size() > 4);
  BOOST_TEST(pyport::mp::load_be32(out.data()) == out.size() - 4);
  auto oh = parse(out.data() + 4, out.size() - 4);
  std::ostringstream text;
  text << oh.get();
  BOOST_TEST(
      text.str() ==
      "[0,0,1,\"3.11.2\",4242,{\"max_frame_size\":1048576,\"features\":[\"call\",\"log\"]}]");
}

BOOST_AUTO_TEST_CASE(error_frames_are_cut_to_fit_between_characters) {
  std::string message, traceback;
  for (int i = 0; i < 3000; ++i)
    message += "\xc3\xa9";  // é
  for (int i = 0; i < 5000; ++i)
    traceback += "line\n";
  for (size_t max : {size_t(256), size_t(1000), size_t(9000), size_t(1 << 20)}) {
    BOOST_TEST_CONTEXT("max_frame_size " << max) {
      ByteBuffer out;
      pyport::write_error_frame(out, 77, "ValueError", message, traceback, max);
      size_t payload = pyport::mp::load_be32(out.data());
      BOOST_TEST(payload == out.size() - 4);
      BOOST_TEST(out.size() <= max);
      auto oh = parse(out.data() + 4, payload);
      auto& a = oh.get().via.array;
      BOOST_REQUIRE_EQUAL(a.size, 5u);
      BOOST_TEST(a.ptr[0].as<int>() == 17);
      BOOST_TEST(a.ptr[1].as<int>() == 77);
      BOOST_TEST(a.ptr[2].as<std::string>() == "ValueError");
      std::string m = a.ptr[3].as<std::string>(), t = a.ptr[4].as<std::string>();
      auto valid = [](const std::string& s) {
        return pyport::utf8::classify(reinterpret_cast<const uint8_t*>(s.data()), s.size()) !=
               pyport::utf8::Kind::kInvalid;
      };
      BOOST_TEST(valid(m));
      BOOST_TEST(valid(t));
      if (max < (1 << 20)) {
        BOOST_TEST(m.find("[truncated]") != std::string::npos);
      } else {
        BOOST_TEST(m == message);
        BOOST_TEST(t == traceback);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(log_frame) {
  ByteBuffer out;
  pyport::write_log_frame(out, "info", "hello");
  auto oh = parse(out.data() + 4, out.size() - 4);
  std::ostringstream text;
  text << oh.get();
  BOOST_TEST(text.str() == "[18,0,\"info\",\"hello\"]");
}

BOOST_AUTO_TEST_CASE(utf8_helpers) {
  using pyport::utf8::cut_point;
  const std::string s =
      "ab\xc3\xa9"
      "cd\xf0\x9f\x98\x80";
  auto* p = reinterpret_cast<const uint8_t*>(s.data());
  BOOST_TEST(cut_point(p, s.size(), 3) == 2u);  // not inside é
  BOOST_TEST(cut_point(p, s.size(), 4) == 4u);
  BOOST_TEST(cut_point(p, s.size(), 8) == 6u);  // not inside the emoji
  BOOST_TEST(cut_point(p, s.size(), 100) == s.size());
  std::string out;
  const uint8_t bad[] = {'a', 0xff, 'b', 0xed, 0xa0, 0x80};
  pyport::utf8::append_sanitized(out, bad, sizeof bad);
  BOOST_TEST(out ==
             "a\xef\xbf\xbd"
             "b\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
}

BOOST_AUTO_TEST_CASE(reader_errors_name_the_field_and_offset) {
  using pyport::mp::Reader;
  const uint8_t neg[] = {0xff};
  Reader r1(neg, 1);
  uint64_t v;
  BOOST_TEST(!r1.read_uint(v, "Id"));
  BOOST_TEST(r1.error() == "Id is negative at byte 0");
  const uint8_t neg16[] = {0xd1, 0xff, 0x00};
  Reader r2(neg16, 3);
  BOOST_TEST(!r2.read_uint(v, "Namespace"));
  BOOST_TEST(r2.error() == "Namespace is negative at byte 0");
  const uint8_t pos16[] = {0xd1, 0x01, 0x00};
  Reader r3(pos16, 3);
  BOOST_TEST(r3.read_uint(v, "Namespace"));
  BOOST_TEST(v == 256u);
  const uint8_t map[] = {0x80};
  Reader r4(map, 1, 10);
  std::string_view s;
  BOOST_TEST(!r4.read_string(s, "Module"));
  BOOST_TEST(r4.error() == "expected a string (Module), found map at byte 10");
  Reader r5(map, 0);
  uint32_t n;
  BOOST_TEST(!r5.read_array_header(n, "Args"));
  BOOST_TEST(r5.error() == "truncated input: Args needs 1 byte, 0 remain at byte 0");
}

BOOST_AUTO_TEST_SUITE_END()
