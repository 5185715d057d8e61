#!/usr/bin/env bash
# gzip_compare.sh — `crew pipe --gzip` / `--gunzip` next to gzip, pigz and Node's zlib streams, on
# the same generated log-like input, in one run (issue 7's stream benchmark).
#
#   bench/stream/gzip_compare.sh [--quick] [--crew PATH] [--make-logs PATH] [--measure PATH]
#
# Built with the bench preset, `cmake --build build/bench --target crew_gzip_compare` runs it with
# the three paths filled in (crew_gzip_compare_quick for --quick).
#
# Environment: CREW_BENCH_BYTES (input size; default 1 GiB, 64 MiB with --quick),
# CREW_BENCH_THREADS (threads for crew and pigz; default 2), CREW_BENCH_REPEAT (rounds; each
# tool runs once per round and its best time is kept; default 1), TMPDIR (where the input and
# outputs go; about 2.5x the input size).
#
# Measures, one run each, same input: compression at level 6 by crew (CREW_BENCH_THREADS threads),
# gzip -6, pigz -p N -6 and Node stream.pipeline(createReadStream, zlib.createGzip({level: 6}),
# createWriteStream) into files; decompression (output discarded, so the disk does not dominate)
# of crew's output by crew, pigz -d and gzip -d, and of pigz's output by crew and pigz -d. MB/s
# counts uncompressed bytes, 10^6 per MB. Peak RSS comes from wait4()'s rusage.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
crew="" make_logs="" measure="" quick=0
while (($#)); do
  case $1 in
    --quick) quick=1 ;;
    --crew) crew=$2; shift ;;
    --make-logs) make_logs=$2; shift ;;
    --measure) measure=$2; shift ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gzip_compare.sh: unknown argument '$1' (see --help)" >&2; exit 64 ;;
  esac
  shift
done
for v in crew make_logs measure; do
  if [[ -z ${!v} || ! -x ${!v} ]]; then
    echo "gzip_compare.sh: --${v//_/-} PATH is required (an executable; see --help)" >&2
    exit 64
  fi
done
bytes=${CREW_BENCH_BYTES:-$((quick ? 64 << 20 : 1 << 30))}
threads=${CREW_BENCH_THREADS:-2}
repeat=${CREW_BENCH_REPEAT:-1}
have() { command -v "$1" >/dev/null 2>&1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/crew-gzip-compare.XXXXXX")
trap 'rm -rf "$work"' EXIT
input=$work/input.log

echo "crew gzip_compare: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "input: $bytes bytes of generated log-like text in $work; $threads threads for crew and pigz; best of $repeat"
"$make_logs" "$bytes" >"$input"
cat "$input" >/dev/null # into the page cache, for every tool alike

# run NAME OUTFILE CMD...: measures CMD once (stdout to OUTFILE); keeps the best wall time and
# the largest peak RSS seen for NAME. Every tool runs once per round, rounds repeat
# CREW_BENCH_REPEAT times, so on a shared machine each tool sees the same background load.
declare -A secs rss
run() {
  local name=$1 out=$2 s r
  shift 2
  "$measure" "$work/m.txt" "$@" >"$out"
  read -r s r _ <"$work/m.txt"
  if [[ -z ${secs[$name]:-} ]] || awk -v a="$s" -v b="${secs[$name]}" 'BEGIN { exit !(a < b) }'; then
    secs[$name]=$s
  fi
  if ((r > ${rss[$name]:-0})); then rss[$name]=$r; fi
}
mbps() { awk -v b="$bytes" -v s="${secs[$1]}" 'BEGIN { printf "%.1f", b / 1e6 / s }'; }
pct() { awk -v a="$(stat -c %s "$1")" -v b="$bytes" 'BEGIN { printf "%.2f", 100 * a / b }'; }
mib() { awk -v k="${rss[$1]}" 'BEGIN { printf "%.1f", k / 1024 }'; }
ratio() { awk -v a="${secs[$2]}" -v b="${secs[$1]}" 'BEGIN { printf "%.2f", a / b }'; }

echo
echo "== compression, level 6 (MB/s of input; output as % of input; peak RSS)"
for ((round = 0; round < repeat; round++)); do
  run crew "$work/crew.gz" "$crew" pipe --gzip=6 --threads "$threads" --no-progress "$input"
  run gzip "$work/gzip.gz" gzip -6 -c "$input"
  if have pigz; then run pigz "$work/pigz.gz" pigz -p "$threads" -6 -c "$input"; fi
  if have node; then run node /dev/null node "$here/gzip_node.js" "$input" "$work/node.gz"; fi
done
printf '%-34s %10s %10s %12s\n' tool MB/s output "peak RSS"
row() { printf '%-34s %10s %9s%% %8s MiB\n' "$1" "$(mbps "$2")" "$(pct "$3")" "$(mib "$2")"; }
row "crew pipe --gzip (-j $threads)" crew "$work/crew.gz"
row "gzip -6" gzip "$work/gzip.gz"
have pigz && row "pigz -p $threads -6" pigz "$work/pigz.gz"
have node && row "node stream.pipeline + zlib" node "$work/node.gz"

# Correctness first (not timed): the system gunzip reads crew's output, crew reads pigz's.
gzip -d -c "$work/crew.gz" | cmp -s - "$input" || { echo "MISMATCH: gzip -d of crew output" >&2; exit 1; }
if have pigz; then
  "$crew" pipe --gunzip --no-progress "$work/pigz.gz" | cmp -s - "$input" ||
    { echo "MISMATCH: crew --gunzip of pigz output" >&2; exit 1; }
fi

echo
echo "== decompression (MB/s of output; output discarded)"
for ((round = 0; round < repeat; round++)); do
  run crew_d /dev/null "$crew" pipe --gunzip --threads "$threads" --no-progress "$work/crew.gz"
  if have pigz; then run pigz_d_crew /dev/null pigz -d -c "$work/crew.gz"; fi
  run gzip_d_crew /dev/null gzip -d -c "$work/crew.gz"
  if have pigz; then
    run crew_d_pigz /dev/null "$crew" pipe --gunzip --threads "$threads" --no-progress "$work/pigz.gz"
    run pigz_d /dev/null pigz -d -c "$work/pigz.gz"
  fi
done
printf '%-34s %10s %12s\n' "tool (input)" MB/s "peak RSS"
drow() { printf '%-34s %10s %8s MiB\n' "$1" "$(mbps "$2")" "$(mib "$2")"; }
drow "crew pipe --gunzip (crew's)" crew_d
have pigz && drow "pigz -d (crew's)" pigz_d_crew
drow "gzip -d (crew's)" gzip_d_crew
if have pigz; then
  drow "crew pipe --gunzip (pigz's)" crew_d_pigz
  drow "pigz -d (pigz's)" pigz_d
fi

echo
echo "== targets"
verdict() { awk -v v="$1" -v t="$2" -v dir="$3" 'BEGIN { ok = (dir == ">=") ? (v >= t) : (v <= t); print (ok ? "met" : "MISSED") }'; }
if have pigz; then
  r=$(ratio crew pigz)
  printf '%-52s %8sx  (target >= 1.5x)   %s\n' "compression speed, crew / pigz -p $threads" "$r" "$(verdict "$r" 1.5 '>=')"
  size=$(awk -v a="$(stat -c %s "$work/crew.gz")" -v b="$(stat -c %s "$work/pigz.gz")" 'BEGIN { printf "%+.2f", 100 * (a - b) / b }')
  printf '%-52s %8s%%  (target <= +2%%)    %s\n' "compressed size, crew vs pigz" "$size" "$(verdict "$size" 2 '<=')"
fi
peak=$(mib crew)
for k in crew_d crew_d_pigz; do
  [[ -n ${rss[$k]:-} ]] && peak=$(awk -v a="$peak" -v k="${rss[$k]}" 'BEGIN { m = k / 1024; printf "%.1f", (m > a ? m : a) }')
done
printf '%-52s %8s MiB (target <= 32 MiB) %s\n' "crew peak RSS (gzip, gunzip)" "$peak" "$(verdict "$peak" 32 '<=')"
if have pigz; then
  r=$(ratio crew_d pigz_d_crew)
  printf '%-52s %8sx  (target >= 2x)     %s\n' "decompression of crew output, crew / pigz -d" "$r" "$(verdict "$r" 2 '>=')"
  r=$(ratio crew_d_pigz pigz_d)
  printf '%-52s %8sx  (target >= 1x)     %s\n' "decompression of pigz output, crew / pigz -d" "$r" "$(verdict "$r" 1 '>=')"
fi
