#!/usr/bin/env bash
# CLI tests for `crew pipe` (CTest label: integration). Usage: pipe.sh PATH/TO/crew
# Each check prints "ok" or "FAIL"; the script exits non-zero if any check failed.
set -uo pipefail

crew=$(realpath "${1:?usage: pipe.sh PATH/TO/crew}")
work=$(mktemp -d "${TMPDIR:-/tmp}/crew-pipe-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
failed=0

pass() { printf 'ok    %s\n' "$1"; }
fail() {
  printf 'FAIL  %s\n' "$1"
  failed=1
}
# expect_exit CODE NAME CMD...: runs CMD (stderr kept in err.txt), checks its exit status.
expect_exit() {
  local want=$1 name=$2
  shift 2
  "$@" >out.txt 2>err.txt
  local got=$?
  if [[ $got == "$want" ]]; then pass "$name"; else
    fail "$name (exit $got, expected $want)"
    sed 's/^/      /' err.txt
  fi
}

# Input: ~3 MiB of text with some binary noise, plus the edge sizes.
{
  for i in $(seq 1 30000); do
    echo "line $i: the quick brown fox jumps over the lazy dog $((i * 7919 % 10007))"
  done
  head -c 200000 /dev/urandom
} >input.bin
: >empty.bin
printf 'x' >one.bin
head -c 32 /dev/urandom >key.raw
od -An -tx1 -v /dev/urandom | tr -d ' \n' | head -c 64 >key.hex
echo >>key.hex
head -c 32 /dev/urandom >wrong.key

# --help, --version
expect_exit 0 "--version" "$crew" --version
grep -q "crew 0\." <("$crew" --version) && pass "--version prints the version" || fail "--version output"
expect_exit 0 "--help" "$crew" --help
expect_exit 0 "pipe --help" "$crew" pipe --help
grep -q -- "--gunzip" <("$crew" pipe --help) && pass "pipe --help lists the flags" || fail "pipe --help output"

# gzip output read by the system gunzip, byte-identical; sizes 0, 1 and ~3 MiB.
for f in empty.bin one.bin input.bin; do
  expect_exit 0 "gzip $f" "$crew" pipe --gzip "$f" "$f.gz"
  if gunzip -c "$f.gz" | cmp -s - "$f"; then pass "system gunzip reads crew gzip of $f"; else
    fail "system gunzip reads crew gzip of $f"
  fi
  gzip -t "$f.gz" && pass "gzip -t $f.gz" || fail "gzip -t $f.gz"
done
# stdin/stdout, a level, several threads.
"$crew" pipe --gzip=9 -j 3 <input.bin >stdio.gz && gunzip -c stdio.gz | cmp -s - input.bin &&
  pass "gzip=9 stdin to stdout" || fail "gzip=9 stdin to stdout"

# crew gunzip of crew's and of the system gzip's output (single member, with a file name).
expect_exit 0 "gunzip crew output" "$crew" pipe --gunzip input.bin.gz out1.bin
cmp -s out1.bin input.bin && pass "gunzip crew output is identical" || fail "gunzip crew output"
gzip -6 -c input.bin >sys.gz
gzip -6 -c input.bin >>sys.gz # two members
cat input.bin input.bin >twice.bin
expect_exit 0 "gunzip system gzip (multi-member)" "$crew" pipe --gunzip sys.gz out2.bin
cmp -s out2.bin twice.bin && pass "gunzip of system gzip is identical" || fail "gunzip system gzip"
cp input.bin named.bin && gzip -9 -N -f named.bin # FNAME header
"$crew" pipe --gunzip named.bin.gz | cmp -s - input.bin && pass "gunzip with FNAME" ||
  fail "gunzip with FNAME"
if command -v pigz >/dev/null; then
  pigz -c -p 2 input.bin >pigz.gz
  "$crew" pipe --gunzip pigz.gz | cmp -s - input.bin && pass "gunzip pigz output" ||
    fail "gunzip pigz output"
fi

# Chained round trip: --gzip --encrypt, then --decrypt --gunzip; hex and raw key files.
for key in key.raw key.hex; do
  expect_exit 0 "gzip+encrypt ($key)" "$crew" pipe --gzip --encrypt "$key" input.bin sealed.bin
  grep -q CREWAEAD <<<"$(head -c 8 sealed.bin)" && pass "encrypted output starts with the magic" ||
    fail "encrypted magic"
  expect_exit 0 "decrypt+gunzip ($key)" "$crew" pipe --decrypt "$key" --gunzip sealed.bin back.bin
  cmp -s back.bin input.bin && pass "round trip through gzip+encrypt ($key)" ||
    fail "round trip ($key)"
done
# Order matters: --encrypt then --gzip is also valid and reverses the same way.
"$crew" pipe --encrypt key.raw --gzip input.bin eg.bin && gzip -t eg.bin &&
  "$crew" pipe --gunzip --decrypt key.raw eg.bin | cmp -s - input.bin &&
  pass "encrypt-then-gzip order is kept" || fail "encrypt-then-gzip order"
for f in empty.bin one.bin; do
  "$crew" pipe --encrypt key.raw "$f" | "$crew" pipe --decrypt key.raw | cmp -s - "$f" &&
    pass "encrypt/decrypt $f" || fail "encrypt/decrypt $f"
done
"$crew" pipe --upper <<<"Hello, World" | grep -qx "HELLO, WORLD" && pass "--upper" || fail "--upper"
want=$(sha256sum input.bin | cut -d' ' -f1)
"$crew" pipe --sha256 input.bin >/dev/null 2>sha.txt
grep -q "$want" sha.txt && pass "--sha256 digest on stderr" || fail "--sha256 digest"

# Data errors: exit 1, a message that says so, and no OUT file left behind.
expect_exit 1 "wrong key" "$crew" pipe --decrypt wrong.key --gunzip sealed.bin wrong.out
grep -q "authentication failed" err.txt && pass "wrong key message" || fail "wrong key message"
[[ ! -e wrong.out ]] && pass "no output after wrong key" || fail "output left after wrong key"
size=$(stat -c %s sealed.bin)
head -c $((size - 10)) sealed.bin >truncated.bin
expect_exit 1 "truncated ciphertext" "$crew" pipe --decrypt key.raw truncated.bin t.out
[[ ! -e t.out ]] && pass "no output after truncated ciphertext" || fail "output left (truncated)"
cp sealed.bin flipped.bin
printf '\x55' | dd of=flipped.bin bs=1 seek=$((size / 2)) conv=notrunc status=none
expect_exit 1 "tampered ciphertext" "$crew" pipe --decrypt key.raw flipped.bin f.out
[[ ! -e f.out ]] && pass "no output after tampering" || fail "output left (tampering)"
gz_size=$(stat -c %s input.bin.gz)
head -c $((gz_size / 2)) input.bin.gz >trunc.gz
expect_exit 1 "truncated gzip" "$crew" pipe --gunzip trunc.gz tg.out
grep -q "data error" err.txt && grep -q "byte" err.txt && pass "truncated gzip message" ||
  fail "truncated gzip message"
[[ ! -e tg.out ]] && pass "no output after truncated gzip" || fail "output left (trunc gzip)"
cp sys.gz corrupt.gz
printf '\xff\xff\xff\xff' | dd of=corrupt.gz bs=1 seek=$((gz_size / 3)) conv=notrunc status=none
expect_exit 1 "corrupt gzip" "$crew" pipe --gunzip corrupt.gz c.out
[[ ! -e c.out ]] && pass "no output after corrupt gzip" || fail "output left (corrupt gzip)"
expect_exit 1 "not gzip" "$crew" pipe --gunzip input.bin n.out
echo keep >existing.out
expect_exit 1 "failure keeps an existing OUT" "$crew" pipe --gunzip corrupt.gz existing.out
[[ $(cat existing.out) == keep ]] && pass "existing OUT untouched" || fail "existing OUT clobbered"
grep -q "crew-tmp\\|\\.crew-" <<<"$(ls -a)" && fail "temporary files left behind" || pass "no temp files left"

# Usage errors: exit 2.
expect_exit 2 "unknown flag" "$crew" pipe --bogus
expect_exit 2 "bad gzip level" "$crew" pipe --gzip=13 input.bin
expect_exit 2 "bad threads" "$crew" pipe --threads 0 input.bin
expect_exit 2 "missing key file" "$crew" pipe --encrypt no-such.key input.bin
expect_exit 2 "bad key file" "$crew" pipe --encrypt input.bin input.bin
expect_exit 2 "missing input" "$crew" pipe --gzip no-such-file
expect_exit 2 "no subcommand" "$crew"
expect_exit 2 "too many positionals" "$crew" pipe a b c

# A signal cancels the run: exit 128+N, no OUT and no temporary file (stdin stays open, so the
# pipeline is still waiting for input when the signal arrives).
"$crew" pipe --gzip - sig.gz < <(echo partial; exec sleep 10 2>/dev/null) 2>sig.txt &
pid=$!
# Signalled once it has blocked SIGTERM for its watcher (bit 15 of SigBlk), not after a guess at
# its start-up time: a sanitizer build can take longer than any guess, and a SIGTERM before that
# ends it with no message.
for _ in $(seq 1 3000); do
  blocked=$(awk '/^SigBlk:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
  [[ -n $blocked ]] && (((16#$blocked >> 14) & 1)) && break
  sleep 0.01
done
kill -TERM "$pid"
wait "$pid"
rc=$?
[[ $rc == 143 ]] && pass "SIGTERM cancels with exit 143" || fail "SIGTERM exit $rc, expected 143"
grep -q "interrupted by signal" sig.txt && pass "signal message" || fail "signal message"
[[ ! -e sig.gz ]] && ! grep -q "sig.gz.crew" <<<"$(ls -a)" && pass "no output after a signal" ||
  fail "output left after a signal"

# Progress: forced with --progress (stderr is a file here); silent otherwise.
"$crew" pipe --gzip --progress input.bin p.gz 2>progress.txt
grep -q "100%" progress.txt && pass "--progress draws" || fail "--progress draws"
"$crew" pipe --gzip input.bin q.gz 2>quiet.txt
[[ ! -s quiet.txt ]] && pass "silent when stderr is not a terminal" || fail "not silent"

exit $failed
