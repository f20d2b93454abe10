// The log relay's rate (port_worker/log_relay.hpp): a token bucket of one
// second's worth, refilled with time, counting what it turns away.
#include <boost/test/unit_test.hpp>
#include <chrono>

#include "log_relay.hpp"

using pyport::LogRate;
using std::chrono::milliseconds;

BOOST_AUTO_TEST_SUITE(log_rate)

BOOST_AUTO_TEST_CASE(unlimited_takes_everything) {
  auto t = LogRate::Clock::time_point{};
  LogRate rate(0, 0, t);
  for (int i = 0; i < 100000; ++i)
    BOOST_REQUIRE(rate.admit(1 << 20, t));
  BOOST_TEST(rate.dropped_lines() == 0u);
}

BOOST_AUTO_TEST_CASE(lines_a_second_with_a_burst_of_one_second) {
  auto t = LogRate::Clock::time_point{};
  LogRate rate(10, 0, t);
  int passed = 0;
  for (int i = 0; i < 100; ++i)
    passed += rate.admit(5, t);
  BOOST_TEST(passed == 10);
  BOOST_TEST(rate.dropped_lines() == 90u);
  BOOST_TEST(rate.dropped_bytes() == 450u);
  BOOST_TEST(rate.ms_until(5, t) == 101);  // one line every 100 ms, rounded up
  // Half a second later: five more.
  t += milliseconds(500);
  passed = 0;
  for (int i = 0; i < 100; ++i)
    passed += rate.admit(5, t);
  BOOST_TEST(passed == 5);
  rate.take_dropped();
  BOOST_TEST(rate.dropped_lines() == 0u);
  // Idle for a minute: the bucket holds one second's worth, no more.
  t += std::chrono::seconds(60);
  passed = 0;
  for (int i = 0; i < 100; ++i)
    passed += rate.admit(5, t);
  BOOST_TEST(passed == 10);
}

BOOST_AUTO_TEST_CASE(bytes_a_second) {
  auto t = LogRate::Clock::time_point{};
  LogRate rate(0, 1000, t);
  BOOST_TEST(rate.admit(600, t));
  BOOST_TEST(!rate.admit(600, t));
  BOOST_TEST(rate.admit(400, t));
  // A line larger than the bucket needs a full bucket, not more.
  t += std::chrono::seconds(1);
  BOOST_TEST(rate.admit(5000, t));
  BOOST_TEST(!rate.admit(1, t));
  BOOST_TEST(rate.dropped_bytes() == 601u);
}

BOOST_AUTO_TEST_CASE(take_does_not_count) {
  auto t = LogRate::Clock::time_point{};
  LogRate rate(1, 0, t);
  BOOST_TEST(rate.take(1, t));
  BOOST_TEST(!rate.take(1, t));
  BOOST_TEST(rate.dropped_lines() == 0u);
}

BOOST_AUTO_TEST_SUITE_END()
