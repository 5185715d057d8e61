#include <crew/errors.hpp>

namespace crew::inline v0 {

Cancelled::Cancelled()
    : Error(
          "crew: the task was cancelled before it finished (its Future was cancelled or its stop "
          "token fired); submit it again if the work is still needed") {}

}  // namespace crew::inline v0
