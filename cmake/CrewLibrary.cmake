# crew_add_library(<target> EXPORT_NAME <name> SOURCES <files...> HEADERS <files...>)
#
# One crew library layer: crew::<name> alias, a public header file set rooted at include/ (the
# include directory for the build and install trees, installed include/crew/**), C++20, PIC,
# versioned, the project's warnings, every public header compiled on its own when
# CREW_VERIFY_HEADERS is on (every header must include what it uses), and installed into the
# crewTargets export set. Static by default; BUILD_SHARED_LIBS=ON gives shared libraries.
include_guard(GLOBAL)

function(crew_add_library target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "EXPORT_NAME" "SOURCES;HEADERS")
  add_library(${target} ${arg_SOURCES})
  add_library(crew::${arg_EXPORT_NAME} ALIAS ${target})
  target_sources(${target}
    PUBLIC
      FILE_SET HEADERS
      BASE_DIRS "${PROJECT_SOURCE_DIR}/include"
      FILES ${arg_HEADERS})
  target_compile_features(${target} PUBLIC cxx_std_20)
  set_target_properties(${target} PROPERTIES
    EXPORT_NAME ${arg_EXPORT_NAME}
    OUTPUT_NAME ${target}
    POSITION_INDEPENDENT_CODE ON
    VERSION ${PROJECT_VERSION}
    SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR}
    VERIFY_INTERFACE_HEADER_SETS ${CREW_VERIFY_HEADERS})
  crew_set_warnings(${target})
  if(CREW_VERIFY_HEADERS)
    # The verification target is not part of "all" by itself; make it so, so that a header that
    # forgets an #include fails the ordinary build and not only a later consumer.
    add_custom_target(${target}_headers_check ALL)
    add_dependencies(${target}_headers_check ${target}_verify_interface_header_sets)
  endif()
  install(TARGETS ${target}
    EXPORT crewTargets
    ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT crew_development
    LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT crew_runtime
            NAMELINK_COMPONENT crew_development
    RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}" COMPONENT crew_runtime
    FILE_SET HEADERS DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}" COMPONENT crew_development)
endfunction()
