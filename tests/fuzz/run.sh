#!/usr/bin/env bash
# Builds the frame decoder and reply ring fuzz target with clang (libFuzzer + ASan + UBSan) and
# runs it. Registered with CTest twice (tests/CMakeLists.txt; docs/testing.md):
#
#   tests/fuzz/run.sh <source-root> <work-dir>            # fuzz.process_frame, label fuzz
#   tests/fuzz/run.sh <source-root> <work-dir> --random   # fuzz-random.process_frame
#
# Default (in the gate): deterministic. A fresh corpus holding only the seed inputs written below,
# libFuzzer's -seed=CREW_FUZZ_SEED (default 1) and -runs=CREW_FUZZ_RUNS (default 500000): the
# same inputs in the same order on every run, whatever the machine's speed. Two more things are
# needed for that: -reload=0 (libFuzzer otherwise rereads the corpus directory every few seconds,
# so what it finds depends on how fast it runs) and ASLR off (the comparisons libFuzzer learns
# from include pointers).
# --random (label fuzz-random, not in the gate): a random seed unless CREW_FUZZ_SEED is set, for
# CREW_FUZZ_SECONDS (default 60), with a corpus kept in <work-dir>/corpus between runs.
#
# On failure it prints the seed and each input libFuzzer saved (crash-*, leak-*, timeout-*,
# oom-*), hex-escaped; `<work-dir>/frame_fuzz <file>` runs one of them again.
set -euo pipefail
root=$1
work=$2
mode=${3:-fixed}
case $mode in
  fixed | --random) ;;
  *)
    echo "usage: $0 <source-root> <work-dir> [--random]" >&2
    exit 64
    ;;
esac
mkdir -p "$work"
clangxx=$(command -v clang++ || command -v clang++-14 || true)
if [[ -z $clangxx ]]; then
  echo "fuzz: clang++ not found; scripts/bootstrap installs it (package clang)" >&2
  exit 1
fi
"$clangxx" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -DMSGPACK_DEFAULT_API_VERSION=3 -I"$root/include" -I"$root/src/process" \
  "$root/tests/fuzz/frame_fuzz.cpp" "$root/src/process/frame.cpp" "$root/src/process/wire.cpp" \
  "$root/src/core/buffer.cpp" "$root/src/core/shared_buffer.cpp" -lfmt -o "$work/frame_fuzz"

corpus="$work/corpus"
artifacts="$work/artifacts"
runner=()
if [[ $mode == fixed ]]; then
  rm -rf "$corpus"  # what an earlier run added would change this one
  seed=${CREW_FUZZ_SEED:-1}
  budget=(-runs="${CREW_FUZZ_RUNS:-500000}" -reload=0)
  if setarch "$(uname -m)" -R true 2>/dev/null; then
    runner=(setarch "$(uname -m)" -R)
  else
    echo "fuzz: setarch -R is not allowed here; with ASLR on, the run may differ a little" >&2
  fi
else
  seed=${CREW_FUZZ_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
  budget=(-max_total_time="${CREW_FUZZ_SECONDS:-60}")
fi
rm -rf "$artifacts"
mkdir -p "$corpus" "$artifacts"

# Seeds: a valid ready frame, a result frame holding 42, an error frame, an array result, a reply
# ring.
python3 - "$corpus" <<'PY'
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

echo "fuzz: CREW_FUZZ_SEED=$seed ${budget[*]} ($mode)"
cd "$work"
set +e
ASAN_OPTIONS=detect_leaks=1 "${runner[@]}" ./frame_fuzz -seed="$seed" "${budget[@]}" -rss_limit_mb=1024 \
  -max_len=4096 -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus"
rc=$?
set -e
if ((rc != 0)); then
  echo "fuzz: FAILED with exit status $rc; CREW_FUZZ_SEED=$seed ${budget[*]} ($mode) repeats the run"
  for f in "$artifacts"/*; do
    [[ -f $f ]] || continue
    python3 - "$f" <<'PY'
import sys
data = open(sys.argv[1], 'rb').read()
text, escaped = '', False
for b in data:  # as the inside of a C++ string literal: "\x0d" "1", not "\x0d1"
    if 0x20 <= b < 0x7f and b not in (0x5c, 0x22):
        text += ('""' if escaped and chr(b) in '0123456789abcdefABCDEF' else '') + chr(b)
        escaped = False
    else:
        text += '\\x%02x' % b
        escaped = True
print('fuzz: input %s (%d bytes): "%s"' % (sys.argv[1], len(data), text))
PY
  done
fi
exit "$rc"
