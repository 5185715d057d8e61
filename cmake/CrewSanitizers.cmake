# Maps the CREW_SANITIZER cache variable to compiler and linker flags for every target in the
# tree (crew, tests, examples, benchmarks): a sanitizer runtime has to see the whole program.
include_guard(GLOBAL)

if(CREW_SANITIZER STREQUAL "")
  return()
endif()

if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  message(FATAL_ERROR "CREW_SANITIZER=${CREW_SANITIZER} needs GCC or Clang")
endif()

if(CREW_SANITIZER STREQUAL "address")
  set(crew_sanitizer_flags
    -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
elseif(CREW_SANITIZER STREQUAL "undefined")
  set(crew_sanitizer_flags -fsanitize=undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
elseif(CREW_SANITIZER STREQUAL "thread")
  set(crew_sanitizer_flags -fsanitize=thread -fno-omit-frame-pointer)
else()
  message(FATAL_ERROR
    "CREW_SANITIZER must be empty, 'address', 'undefined' or 'thread', not '${CREW_SANITIZER}'")
endif()

message(STATUS "crew: sanitizer flags ${crew_sanitizer_flags}")
add_compile_options(${crew_sanitizer_flags})
add_link_options(${crew_sanitizer_flags})
