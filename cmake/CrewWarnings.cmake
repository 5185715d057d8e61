# crew_set_warnings(<target>...)
#
# Turns on the house warning set for crew's own targets. The options are PRIVATE, so they never
# leak to consumers or to third-party code; headers of imported targets (GTest, fmt, benchmark)
# are included as system headers and stay quiet.
include_guard(GLOBAL)

function(crew_set_warnings)
  foreach(target IN LISTS ARGN)
    if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
      target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
      if(CREW_WERROR)
        target_compile_options(${target} PRIVATE -Werror)
        # g++ 12 warns (-Wtsan) that TSan does not model std::atomic_thread_fence. That is worth
        # seeing, but it must not break the tsan build: keep it a warning.
        if(CREW_SANITIZER STREQUAL "thread" AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
          target_compile_options(${target} PRIVATE -Wno-error=tsan)
        endif()
      endif()
    elseif(MSVC)
      target_compile_options(${target} PRIVATE /W4 $<$<BOOL:${CREW_WERROR}>:/WX>)
    endif()
  endforeach()
endfunction()
