// crew::StageError — how a failed stream pipeline reports which stage failed, where, and why.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

#include <crew/errors.hpp>

namespace crew {
inline namespace v0 {

/// A stage of a `crew::stream` pipeline threw: the pipeline stopped its source, handed nothing
/// further downstream, and its Future rejects with this error (Node's `pipeline()` semantics).
///
/// The message names the stage (name and position), the item index (or, in a byte stream, the
/// byte offset of the chunk) at which it failed, and the cause's own message:
///
///     crew::stream: stage 2 'map' failed at item 41: stoi: no conversion
///
/// The cause is kept as the nested exception (`std::rethrow_if_nested(e)`, or `cause()`), with
/// its original type.
///
/// Thread safety: immutable after construction; safe to read from any thread.
class StageError : public Error, public std::nested_exception {
 public:
  /// What `position()` counts.
  enum class Unit {
    item,  ///< the index of the item (0-based) in the stage's input
    byte,  ///< the byte offset (in the stage's input) of the chunk being processed
  };

  /// Must be constructed inside a catch block: the exception being handled becomes the cause.
  StageError(std::string stage, std::size_t stage_index, std::uint64_t position, Unit unit,
             const std::string& cause_message);

  /// The stage's name ("map", "read_file", or the name given with `.named()`).
  [[nodiscard]] const std::string& stage() const noexcept { return stage_; }
  /// The stage's position in the pipeline (the source is 0).
  [[nodiscard]] std::size_t stage_index() const noexcept { return stage_index_; }
  /// The item index or byte offset at which the stage failed (see `unit()`).
  [[nodiscard]] std::uint64_t position() const noexcept { return position_; }
  [[nodiscard]] Unit unit() const noexcept { return unit_; }
  /// The exception the stage threw.
  [[nodiscard]] std::exception_ptr cause() const noexcept { return nested_ptr(); }

 private:
  std::string stage_;
  std::size_t stage_index_;
  std::uint64_t position_;
  Unit unit_;
};

namespace stream {
/// The same type as crew::StageError, spelled in the stream namespace.
using StageError = crew::StageError;
}  // namespace stream

}  // namespace v0
}  // namespace crew
