#!/usr/bin/env bash
# Install test: installs a configured and built crew tree into a scratch prefix, then proves the
# installed package is usable the two ways a consumer would use it:
#   1. CMake: find_package(crew REQUIRED) + target_link_libraries(app crew::core)
#   2. pkg-config: g++ -std=c++20 main.cpp $(pkg-config --cflags --libs crew)
# Run by CTest as `install_consumer` (tests/CMakeLists.txt); usable by hand with the same flags.
set -euo pipefail

usage() {
  echo "usage: $0 --build-dir DIR --work-dir DIR --consumer DIR [--cmake EXE] [--generator G]" \
       "[--cxx EXE] [--libdir lib]" >&2
  exit 64
}

build_dir="" work_dir="" consumer="" cmake_exe="cmake" generator="Ninja" cxx="c++" libdir="lib"
while (($#)); do
  case "$1" in
    --build-dir) build_dir=$2 ;;
    --work-dir) work_dir=$2 ;;
    --consumer) consumer=$2 ;;
    --cmake) cmake_exe=$2 ;;
    --generator) generator=$2 ;;
    --cxx) cxx=$2 ;;
    --libdir) libdir=$2 ;;
    *) usage ;;
  esac
  shift 2 || usage
done
[[ -n $build_dir && -n $work_dir && -n $consumer ]] || usage

step() { printf '\n== install_consumer: %s\n' "$*"; }
fail() { printf 'install_consumer: FAILED: %s\n' "$*" >&2; exit 1; }

prefix="$work_dir/prefix"
rm -rf "$work_dir"
mkdir -p "$work_dir"

step "cmake --install $build_dir --prefix $prefix"
"$cmake_exe" --install "$build_dir" --prefix "$prefix"

for f in "include/crew/crew.hpp" "$libdir/cmake/crew/crewConfig.cmake" \
         "$libdir/cmake/crew/crewConfigVersion.cmake" "$libdir/cmake/crew/crewTargets.cmake" \
         "$libdir/pkgconfig/crew.pc"; do
  [[ -f "$prefix/$f" ]] || fail "missing $prefix/$f"
done
compgen -G "$prefix/$libdir/libcrew_core.*" >/dev/null || fail "missing $prefix/$libdir/libcrew_core.*"
[[ ! -e "$prefix/src" ]] || fail "src/ must not be installed"

step "CMake consumer: find_package(crew)"
"$cmake_exe" -S "$consumer" -B "$work_dir/cmake-build" -G "$generator" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
crew_dir=$(sed -n 's/^crew_DIR:PATH=//p' "$work_dir/cmake-build/CMakeCache.txt")
[[ $crew_dir == "$prefix"/* ]] || fail "find_package(crew) found '$crew_dir', not the scratch prefix"
"$cmake_exe" --build "$work_dir/cmake-build" -j 2
out=$(timeout 60 "$work_dir/cmake-build/crew_consumer") || fail "crew_consumer failed: $out"
echo "$out"
# Each layer the tree installed must have been linked and run, not silently left out.
for layer in process stream redis; do
  if compgen -G "$prefix/$libdir/libcrew_$layer.*" >/dev/null; then
    grep -q "crew::$layer" <<<"$out" || fail "libcrew_$layer is installed but crew::$layer was not used"
  fi
done

step "pkg-config consumer: $cxx -std=c++20 main.cpp \$(pkg-config --cflags --libs crew)"
export PKG_CONFIG_PATH="$prefix/$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
pc_flags=$(pkg-config --cflags --libs crew)
echo "pkg-config --cflags --libs crew: $pc_flags"
# shellcheck disable=SC2086  # the flags must split into words
"$cxx" -std=c++20 "$consumer/main.cpp" $pc_flags -o "$work_dir/crew_consumer_pc"
# A shared libcrew_core has no rpath on this link line; tell the loader where it is.
LD_LIBRARY_PATH="$prefix/$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  timeout 60 "$work_dir/crew_consumer_pc"

step "ok"
