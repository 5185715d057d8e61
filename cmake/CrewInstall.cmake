# Package files for consumers: lib/cmake/crew/{crewConfig,crewConfigVersion,crewTargets}.cmake
# (find_package(crew) + crew::core) and lib/pkgconfig/crew.pc. The targets themselves are added
# to the crewTargets export set next to their definition (src/<layer>/CMakeLists.txt).
include_guard(GLOBAL)
include(CMakePackageConfigHelpers)

set(CREW_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/crew"
  CACHE STRING "Where crewConfig.cmake is installed, relative to the prefix")
set(CREW_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_LIBDIR}/pkgconfig"
  CACHE STRING "Where crew.pc is installed, relative to the prefix")

# A static crew_core carries fmt::fmt as a link-only dependency, so consumers need fmt too.
get_target_property(crew_core_type crew_core TYPE)
if(crew_core_type STREQUAL "STATIC_LIBRARY")
  set(CREW_CORE_STATIC ON)
else()
  set(CREW_CORE_STATIC OFF)
endif()

if(TARGET crew_process)
  set(CREW_HAS_PROCESS ON)
else()
  set(CREW_HAS_PROCESS OFF)
endif()

if(TARGET crew_stream)
  set(CREW_HAS_STREAM ON)
else()
  set(CREW_HAS_STREAM OFF)
endif()

if(TARGET crew_asio)
  set(CREW_HAS_ASIO ON)
else()
  set(CREW_HAS_ASIO OFF)
endif()

if(TARGET crew_redis)
  set(CREW_HAS_REDIS ON)
else()
  set(CREW_HAS_REDIS OFF)
endif()

install(EXPORT crewTargets
  NAMESPACE crew::
  FILE crewTargets.cmake
  DESTINATION "${CREW_INSTALL_CMAKEDIR}"
  COMPONENT crew_development)

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/crewConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/crewConfig.cmake"
  INSTALL_DESTINATION "${CREW_INSTALL_CMAKEDIR}")

# 0.x: a minor version bump may break the API.
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/crewConfigVersion.cmake"
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMinorVersion)

install(FILES
  "${PROJECT_BINARY_DIR}/crewConfig.cmake"
  "${PROJECT_BINARY_DIR}/crewConfigVersion.cmake"
  DESTINATION "${CREW_INSTALL_CMAKEDIR}"
  COMPONENT crew_development)

# pkg-config. The prefix is computed from the .pc file's own location, so the file stays right
# when the tree is installed with `cmake --install --prefix <elsewhere>` or moved afterwards.
function(crew_pc_path out dir)
  if(IS_ABSOLUTE "${dir}")
    set(${out} "${dir}" PARENT_SCOPE)
  else()
    set(${out} "\${prefix}/${dir}" PARENT_SCOPE)
  endif()
endfunction()

if(IS_ABSOLUTE "${CREW_INSTALL_PKGCONFIGDIR}")
  set(CREW_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  file(RELATIVE_PATH crew_pc_up "/root/${CREW_INSTALL_PKGCONFIGDIR}" "/root")
  string(REGEX REPLACE "/$" "" crew_pc_up "${crew_pc_up}")
  set(CREW_PC_PREFIX "\${pcfiledir}/${crew_pc_up}")
endif()
crew_pc_path(CREW_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
crew_pc_path(CREW_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")

# Static: `pkg-config --libs crew` must name fmt, so it is a public requirement. Shared: fmt is
# linked into libcrew_core.so and only needed by pkg-config --static.
if(CREW_CORE_STATIC)
  set(CREW_PC_REQUIRES "fmt")
  set(CREW_PC_REQUIRES_PRIVATE "")
else()
  set(CREW_PC_REQUIRES "")
  set(CREW_PC_REQUIRES_PRIVATE "fmt")
endif()

configure_file("${PROJECT_SOURCE_DIR}/cmake/crew.pc.in" "${PROJECT_BINARY_DIR}/crew.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/crew.pc"
  DESTINATION "${CREW_INSTALL_PKGCONFIGDIR}"
  COMPONENT crew_development)
