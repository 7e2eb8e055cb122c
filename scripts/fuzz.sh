#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for a fixed time each, starting from
# the committed seeds (fuzz/seeds/<target>/) and the local corpus (fuzz/corpus/<target>/,
# not committed). A crash stops the run, non-zero, with the input under
# fuzz/artifacts/<target>/ (replay: fuzz/target/x86_64-unknown-linux-gnu/release/<target> FILE).
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 15         # a short run (CI)
#   scripts/fuzz.sh 600 resp_parser
#
# Needs the nightly toolchain (libFuzzer's instrumentation) and cargo-fuzz, installed here
# when missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
shift || true
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing the nightly toolchain" >&2
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "seeds/$t"
  rm -rf "artifacts/$t"
  echo "fuzz.sh: $t for ${seconds} s" >&2
  cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 2>&1 \
    | grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)|panicked|SUMMARY|ERROR' || true
  if [ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]; then
    echo "fuzz.sh: $t found a crash: $(ls "artifacts/$t")" >&2
    exit 1
  fi
done
echo "fuzz.sh: no crash in ${targets[*]}" >&2
