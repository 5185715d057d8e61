#!/usr/bin/env bash
# Builds the frame decoder and reply ring fuzz target with clang (libFuzzer + ASan + UBSan) and
# runs it for CREW_FUZZ_SECONDS (default 60). Registered with CTest under the label `fuzz`.
#
#   tests/fuzz/run.sh <source-root> <work-dir>
set -euo pipefail
root=$1
work=$2
seconds=${CREW_FUZZ_SECONDS:-60}
mkdir -p "$work/corpus"
clangxx=$(command -v clang++ || command -v clang++-14 || true)
if [[ -z $clangxx ]]; then
  echo "fuzz: clang++ not found; scripts/bootstrap installs it (package clang)" >&2
  exit 1
fi
"$clangxx" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -DMSGPACK_DEFAULT_API_VERSION=3 -I"$root/include" -I"$root/src/process" \
  "$root/tests/fuzz/frame_fuzz.cpp" "$root/src/process/frame.cpp" "$root/src/process/wire.cpp" \
  "$root/src/core/buffer.cpp" "$root/src/core/shared_buffer.cpp" -lfmt -o "$work/frame_fuzz"
# Seeds: a valid ready frame, a result frame holding 42, an error frame.
python3 - "$work/corpus" <<'PY'
import struct, sys
d = sys.argv[1]
def frame(t, fid, payload):
    return struct.pack('<IBBBBQQ', 0x31575243, t, 0, 0, 0, fid, len(payload)) + payload
open(d + '/ready', 'wb').write(frame(1, 1234, b''))
open(d + '/result', 'wb').write(frame(3, 7, b'\x2a'))
open(d + '/error', 'wb').write(frame(4, 7, b'\x93\x01\xa3abc\xa4boom'))
open(d + '/array', 'wb').write(frame(3, 7, b'\x92\xa1a\xa1b'))
# A reply ring holding one frame entry (a result of 42) and a socket marker.
result = frame(3, 7, b'\x2a')
entry = struct.pack('<II', len(result), 1) + result + b'\0' * (-len(result) % 8)
marker = struct.pack('<II', 0, 2)
ring = entry + marker
open(d + '/ring', 'wb').write(b'R' + struct.pack('<Q', len(ring)) + ring)
PY
cd "$work"
ASAN_OPTIONS=detect_leaks=1 ./frame_fuzz -max_total_time="$seconds" -rss_limit_mb=1024 \
  -max_len=4096 -print_final_stats=1 corpus
