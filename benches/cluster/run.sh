#!/usr/bin/env bash
# What a cluster costs: the same brokk-load scenarios against
#   single      one brokk without [cluster] (no NATS at all),
#   same-node   node a of a two-node cluster, publishers and subscribers on a,
#   cross-node  publishers on node a, subscribers on node b,
# ROUNDS times. nats-server (one server, JetStream on) and both nodes share CPU 0,
# the generator runs on CPU 1. For each run it prints the messages received per
# second, the latency percentiles of the rate-limited scenarios, and the CPU time
# (user + system, from /proc/PID/stat) that node a, node b and nats-server spent
# per message received.
#
# Usage: benches/cluster/run.sh [ROUNDS]   (default 1)
# SCENARIOS picks brokk-load scenarios; LOAD_ARGS adds brokk-load options to every
# run (LOAD_ARGS=--persistent: subscribers with persistent sessions, whose queues a
# cluster node writes to JetStream).
# Needs nats-server (scripts/install-clients.sh installs it; scripts/nats-server-path.sh
# finds it) and taskset.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-1}"
SCENARIOS="${SCENARIOS:-pairs-q0-v5 pairs-q1-v5 fanin-q1-v5 latency-q0-v5-10k latency-q1-v5-10k}"
NATS="$(scripts/nats-server-path.sh)"
cargo build --release -q -p adapter-tokio --bin brokk
cargo build --release -q -p brokk-benches --bin brokk-load
BROKK=target/release/brokk
LOAD=target/release/brokk-load
work="$(mktemp -d)"
pids=()
stop_all() {
  # The nodes first (in reverse order of start: nats-server last); a process that
  # has not exited after 20 s is killed and said so (the next run would
  # otherwise measure it: it keeps the port).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    p="${pids[$i]}"
    kill "$p" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then
      echo "pid $p did not exit within 20 s of SIGTERM: killed" >&2
      kill -9 "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

ticks() { # utime + stime of PID, in clock ticks
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}
HZ="$(getconf CLK_TCK)"

# start_broker NAME PORT [ARGS...]: starts brokk pinned to CPU 0, waits for its
# listening line, sets $started to its pid.
start_broker() {
  local name="$1" port="$2"
  shift 2
  taskset -c 0 "$BROKK" --listen "127.0.0.1:$port" --in-memory "$@" >"$work/$name.log" 2>&1 &
  started=$!
  pids+=("$started")
  for _ in $(seq 200); do grep -q "brokk listening" "$work/$name.log" && return; sleep 0.05; done
  echo "$name did not start:" >&2
  cat "$work/$name.log" >&2
  exit 1
}

field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

printf 'round\tscenario\tmode\trx_per_s\tp50_us\tp99_us\tok\tcpu_us_per_msg(a+b+nats)\n'
for round in $(seq "$ROUNDS"); do
  for mode in single same-node cross-node; do
    if [ "$mode" = single ]; then
      start_broker single 21883
      a=$started b="" nats=""
      pub_port=21883 sub_port=21883
    else
      rm -rf "$work/js"
      taskset -c 0 "$NATS" -a 127.0.0.1 -p 24222 -js -sd "$work/js" >"$work/nats.log" 2>&1 &
      nats=$!
      pids+=("$nats")
      sleep 0.5
      start_broker a 21883 --cluster-node a --nats nats://127.0.0.1:24222
      a=$started
      start_broker b 21884 --cluster-node b --nats nats://127.0.0.1:24222
      b=$started
      pub_port=21883
      sub_port=$([ "$mode" = cross-node ] && echo 21884 || echo 21883)
    fi
    for scenario in $SCENARIOS; do
      before=0
      for p in $a $b $nats; do before=$((before + $(ticks "$p"))); done
      extra=(${LOAD_ARGS:-})
      [ "$sub_port" != "$pub_port" ] && extra+=(--sub-port "$sub_port")
      line="$(taskset -c 1 "$LOAD" run "$scenario" --port "$pub_port" "${extra[@]}" 2>&1 | tail -1)"
      after=0
      for p in $a $b $nats; do after=$((after + $(ticks "$p"))); done
      rx="$(field "$line" unique)"
      per_msg="$(awk -v t=$((after - before)) -v hz="$HZ" -v n="${rx:-0}" \
        'BEGIN { if (n > 0) printf "%.2f", t / hz * 1e6 / n; else print "?" }')"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$scenario" "$mode" \
        "$(field "$line" rx_per_s)" "$(field "$line" p50_us)" "$(field "$line" p99_us)" \
        "$(field "$line" ok)" "$per_msg"
    done
    stop_all
  done
done
