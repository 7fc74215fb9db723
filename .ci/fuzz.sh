#!/usr/bin/env bash
# Runs each fuzz target for a short fixed time after the tests (issue 10).
# The targets' seed corpora (testdata/fuzz) already run as plain tests in
# `go test ./...`; this step searches for new inputs. A crash fails CI and
# leaves the input in the package's testdata/fuzz for `go test` to replay.
# The step stops starting targets once FUZZ_BUDGET seconds (compilation
# included) are spent, and says which it skipped. The budget holds about
# five of the targets (it was 170 s and seven targets until the whole CI run
# passed 30 minutes), so the list is started at an offset that moves with
# the day of the year (FUZZ_OFFSET overrides it): over three days every
# target is fuzzed.
set -euo pipefail
cd "$(dirname "$0")/.."
per="${FUZZ_TIME:-8s}"
budget="${FUZZ_BUDGET:-100}"
targets=(
  "./adapters/signed FuzzEnvelope"
  "./bus FuzzHandle"
  "./flows FuzzDecodeItem"
  "./flows FuzzRecord"
  "./catalog FuzzHandle"
  "./flows FuzzParseYAML"
  "./flows FuzzSubmitBody"
  "./adapters/nats FuzzCodec"
  "./adapters/kafka FuzzCodec"
  "./adapters/rabbitmq FuzzCodec"
  "./adapters/sqs FuzzCodec"
  "./adapters/azservicebus FuzzCodec"
)
n=${#targets[@]}
offset=$(( ${FUZZ_OFFSET:-$(( 10#$(date +%j) * 7 ))} % n ))
rotated=("${targets[@]:offset}" "${targets[@]:0:offset}")
echo "fuzz: ${n} targets, starting at number $((offset + 1))"
start=$SECONDS
for t in "${rotated[@]}"; do
  read -r pkg name <<<"$t"
  left=$((budget - (SECONDS - start)))
  if [ "$left" -le 15 ]; then
    echo "fuzz: budget of ${budget}s spent; not fuzzed: $pkg $name"
    continue
  fi
  out=$(mktemp)
  rc=0
  timeout "$left" go test -run '^$' -fuzz "^${name}\$" -fuzztime "$per" "$pkg" >"$out" 2>&1 || rc=$?
  if [ "$rc" = 0 ] && grep -q 'no fuzz tests to fuzz' "$out"; then
    echo "fuzz: $pkg has no fuzz target $name (renamed or removed? update .ci/fuzz.sh)"; exit 1
  fi
  execs=$(grep -o 'execs: [0-9]*' "$out" | tail -1 | cut -d' ' -f2 || true)
  case $rc in
    0) echo "fuzz: $pkg $name: ${execs:-0} execs in $per, no failure" ;;
    124) echo "fuzz: budget of ${budget}s spent while building or running $pkg $name (${execs:-0} execs)" ;;
    *)
      cat "$out"
      if grep -q -e 'Failing input written to' -e '\[build failed\]' -e '\[setup failed\]' "$out"; then
        echo "fuzz: $pkg $name FAILED"; exit 1
      fi
      # No failing input: the fuzzing engine itself gave up (a worker hung
      # or was killed on a loaded machine), not a crash in the target.
      echo "fuzz: $pkg $name stopped without a failing input (exit $rc); not counted as a failure" ;;
  esac
  rm -f "$out"
done
echo "fuzz: done in $((SECONDS - start))s"
