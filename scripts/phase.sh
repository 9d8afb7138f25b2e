#!/usr/bin/env bash
# phase.sh NAME COMMAND...: run COMMAND, then say how long it took, so a run's log shows where
# its time went (`make test` runs each of its steps through this).
set -uo pipefail
name="$1"
shift
start=$SECONDS
"$@"
rc=$?
printf '== %s: %d s%s\n' "$name" $((SECONDS - start)) "$( ((rc == 0)) || echo " (failed, exit $rc)")" >&2
exit "$rc"
