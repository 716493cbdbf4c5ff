#!/usr/bin/env bash
# Run a speed measurement on a quiet host: `bash benchmarks/quiet.sh CMD ARGS...`
#
# This machine has 2 cores shared by everyone working here; llama.cpp's spinning threads run 10-50x
# slower when oversubscribed. Convention: long CPU jobs that are not speed measurements run under
# `nice -n 19`. This wrapper takes a lock (one speed measurement at a time), keeps every niced process
# of this user paused (SIGSTOP, re-checked twice a second so jobs started meanwhile are paused too)
# while CMD runs at normal priority, then resumes them all.
set -u
exec 9>/tmp/edge-quiet.lock
flock 9
list=$(mktemp)
pause() { for p in $(ps -u "$(id -u)" -o pid=,ni=,stat= | awk '$2 >= 10 && $3 !~ /^T/ {print $1}'); do
            kill -STOP "$p" 2>/dev/null && echo "$p" >> "$list"; done; }
( while :; do pause; sleep 0.5; done ) &
watcher=$!
trap 'kill $watcher 2>/dev/null; wait $watcher 2>/dev/null; pause; sort -u "$list" | xargs -r kill -CONT 2>/dev/null; rm -f "$list"' EXIT
pause
sleep 5  # let the load settle
"$@"
