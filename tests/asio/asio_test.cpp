// crew/asio.hpp over Boost.Asio (Debian's 1.74: callbacks, use_future, use_awaitable).
#include <utility>  // before Boost.Asio 1.74, whose awaitable.hpp forgets it

#include <boost/asio.hpp>

namespace net = boost::asio;

#include "asio/asio_common.hpp"

namespace {

TEST(AsioBoost, ACallbackGetsTheValueOnItsOwnExecutorNeverOnAPoolThread) {
  asio_test::ACallbackGetsTheValueOnItsOwnExecutorNeverOnAPoolThread();
}
TEST(AsioBoost, UseFutureGivesTheValueOrTheTasksException) {
  asio_test::UseFutureGivesTheValueOrTheTasksException();
}
TEST(AsioBoost, CoroutinesAwaitThreadAndProcessTasks) {
  asio_test::CoroutinesAwaitThreadAndProcessTasks();
}
TEST(AsioBoost, ARefusedRunCompletesWithTheErrorInsteadOfThrowing) {
  asio_test::ARefusedRunCompletesWithTheErrorInsteadOfThrowing();
}
TEST(AsioBoost, TheLoopsTimersStayOnTimeWhileThePoolIsSaturated) {
  asio_test::TheLoopsTimersStayOnTimeWhileThePoolIsSaturated();
}

}  // namespace

int main(int argc, char** argv) {
  if (crew::is_worker_process()) return crew::worker_main(asio_test::tasks());
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
