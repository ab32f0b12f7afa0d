#!/usr/bin/env bash
# Where the CPU goes while `ferry bench relay` runs: utime + stime ticks (1/100 s) of the relay
# child, nats-server (or the broker named by $1's process), the PostgreSQL backends and the bench
# process, over a 3 s window taken once the relay has run for 1 s, against the machine's total.
# Usage: scripts/relay-cpu-split.sh [nats|rabbitmq|redis] (needs target/release/ferry).
set -euo pipefail
broker=${1:-nats}
case "$broker" in
  nats) server=nats-server ;;
  rabbitmq) server=beam.smp ;;
  redis) server=redis-server ;;
  *) echo "unknown broker $broker" >&2; exit 2 ;;
esac
ticks() { local t=0 p; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
out=$(mktemp)
target/release/ferry bench relay --broker "$broker" --messages 400000 >"$out" 2>&1 &
until pgrep -f "ferry relay --config" >/dev/null; do sleep 0.05; done
sleep 1
relay=$(pgrep -f "ferry relay --config"); bench=$(pgrep -f "ferry bench relay")
broker_pids=$(pgrep -x "$server" | tr '\n' ' '); postgres=$(pgrep -x postgres | tr '\n' ' ')
r0=$(ticks $relay); b0=$(ticks $bench); s0=$(ticks $broker_pids); p0=$(ticks $postgres); t0=$(busy)
sleep 3
r1=$(ticks $relay); b1=$(ticks $bench); s1=$(ticks $broker_pids); p1=$(ticks $postgres); t1=$(busy)
wait
grep -E "^$broker |relay:" "$out"
echo "busy ticks, both cores, 3 s (600 = saturated): $((t1 - t0))"
echo "relay $((r1 - r0))  $server $((s1 - s0))  postgres $((p1 - p0))  bench $((b1 - b0))"
rm -f "$out"
