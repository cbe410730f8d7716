#!/usr/bin/env bash
# End-to-end benchmark, side by side: brokk (tokio), brokk (smol) if it builds,
# Mosquitto and rumqttd, all driven by the same generator (brokk-load).
#
# usage: benches/e2e/run.sh [--quick] [--runs N] [--out DIR] [--brokers "LIST"]
#   --quick        the quick subset, shorter windows, 1 run unless --runs is given
#   --runs N       runs per scenario and broker; the table shows medians (default 3)
#   --out DIR      where records, logs and the table go (default target/e2e/<time>)
#   --brokers LIST subset of "brokk-tokio brokk-smol mosquitto rumqttd"
#
# Each broker runs pinned to CPU 0 (taskset -c 0), the generator on CPU 1, and the
# broker is restarted for every scenario and run. Prints one markdown table.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
quick=0
runs=
out=
brokers="brokk-tokio brokk-smol mosquitto rumqttd"
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --runs) runs=${2:?--runs needs a number}; shift ;;
        --out) out=${2:?--out needs a directory}; shift ;;
        --brokers) brokers=${2:?--brokers needs a list}; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$quick" = 1 ]; then
    runs=${runs:-1}; timing=(--warmup 0.5 --duration 2 --drain 3 --conns 5000); list=(--quick)
else
    runs=${runs:-3}; timing=(--warmup 1 --duration 5 --drain 5 --conns 10000); list=()
fi
out=${out:-$target/e2e/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$out/work"
results=$out/results.txt
: > "$results"
say() { echo "run.sh: $*" >&2; }

# Connection scenarios need more descriptors than the usual soft limit of 1024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || say "could not raise ulimit -n above $(ulimit -n)"

# --- build and install -------------------------------------------------------
cd "$root"
say "building brokk and brokk-load (release)"
cargo build --release --quiet -p adapter-tokio --bin brokk
cargo build --release --quiet -p brokk-benches --bin brokk-load
load=$target/release/brokk-load
declare -A bin
bin[brokk-tokio]=$target/release/brokk
if [ -d "$root/adapter-smol" ] && cargo build --release --quiet -p adapter-smol --bin brokk-smol; then
    bin[brokk-smol]=$target/release/brokk-smol
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
mosquitto_bin() { command -v mosquitto || { [ -x /usr/sbin/mosquitto ] && echo /usr/sbin/mosquitto; }; }
if [[ " $brokers " == *" mosquitto "* ]] && ! mosquitto_bin > /dev/null; then
    say "installing mosquitto from Debian's packages"
    as_root apt-get install -y mosquitto > "$out/apt.log" 2>&1 || say "apt-get install mosquitto failed, see $out/apt.log"
fi
if b=$(mosquitto_bin); then bin[mosquitto]=$b; fi
rumqttd_bin() { command -v rumqttd || { [ -x "$HOME/.cargo/bin/rumqttd" ] && echo "$HOME/.cargo/bin/rumqttd"; }; }
if [[ " $brokers " == *" rumqttd "* ]] && ! rumqttd_bin > /dev/null; then
    say "installing rumqttd with cargo install (a few minutes)"
    # rumqttd 0.20.0's lock file pins metrics 0.22.1, which newer compilers reject
    # (E0521); without --locked cargo picks a fixed 0.22.x
    CARGO_TARGET_DIR=$out/rumqttd-build cargo install rumqttd --locked > "$out/rumqttd-install.log" 2>&1 \
        || CARGO_TARGET_DIR=$out/rumqttd-build cargo install rumqttd >> "$out/rumqttd-install.log" 2>&1 \
        || say "cargo install rumqttd failed, see $out/rumqttd-install.log"
fi
if b=$(rumqttd_bin); then bin[rumqttd]=$b; fi

active=()
for b in $brokers; do
    if [ -n "${bin[$b]:-}" ]; then active+=("$b"); else say "skipping $b: not available"; fi
done

# --- brokers -----------------------------------------------------------------
port=22000
bpid=
# start NAME: starts broker NAME on CPU 0 on fresh ports; sets bpid, p4, p5
start() {
    local name=$1 dir=$out/work/$1
    mkdir -p "$dir"
    port=$((port + 2)); p4=$port; p5=$port
    case $name in
        brokk-*)
            (cd "$dir" && exec taskset -c 0 "${bin[$name]}" --listen "127.0.0.1:$p4") \
                >> "$out/$name.log" 2>&1 &
            ;;
        mosquitto)
            # defaults except: no persistence, room for QoS 1 backlogs (the default
            # drops after 1000 queued), a window of 100, TCP_NODELAY like the others
            cat > "$dir/mosquitto.conf" <<CONF
per_listener_settings false
listener $p4 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages 100
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
CONF
            taskset -c 0 "${bin[mosquitto]}" -c "$dir/mosquitto.conf" >> "$out/$name.log" 2>&1 &
            ;;
        rumqttd)
            # rumqttd serves one protocol version per listener
            p5=$((p4 + 1))
            local v
            {
                printf 'id = 0\n\n[router]\nid = 0\nmax_connections = 60000\n'
                printf 'max_outgoing_packet_count = 200\nmax_segment_size = 104857600\nmax_segment_count = 10\n'
                for v in 4 5; do
                    printf '\n[v%s.1]\nname = "v%s"\nlisten = "127.0.0.1:%s"\nnext_connection_delay_ms = 0\n' \
                        "$v" "$v" "$([ $v = 4 ] && echo $p4 || echo $p5)"
                    printf '    [v%s.1.connections]\n    connection_timeout_ms = 60000\n' "$v"
                    printf '    max_payload_size = 1048576\n    max_inflight_count = 100\n    dynamic_filters = true\n'
                done
            } > "$dir/rumqttd.toml"
            (cd "$dir" && exec taskset -c 0 "${bin[rumqttd]}" -q -c "$dir/rumqttd.toml") >> "$out/$name.log" 2>&1 &
            ;;
    esac
    bpid=$!
    local ok=0
    if taskset -c 1 "$load" probe --port "$p4" --proto "$([ $name = rumqttd ] && echo 4 || echo 5)" --wait 20; then
        ok=1
        if [ "$p5" != "$p4" ]; then taskset -c 1 "$load" probe --port "$p5" --proto 5 --wait 20 || ok=0; fi
    fi
    [ $ok = 1 ]
}

stop() {
    kill -TERM "$bpid" 2> /dev/null || true
    for _ in $(seq 50); do kill -0 "$bpid" 2> /dev/null || break; sleep 0.1; done
    kill -KILL "$bpid" 2> /dev/null || true
    wait "$bpid" 2> /dev/null || true
}
trap 'kill -KILL "$bpid" 2> /dev/null || true' EXIT

# --- the machine ---------------------------------------------------------------
{
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- command: benches/e2e/run.sh $([ $quick = 1 ] && echo --quick) --runs $runs"
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
    echo "- load average before the run: $(cut -d' ' -f1-3 /proc/loadavg); ulimit -n $(ulimit -n)"
    echo "- brokk: $(git -C "$root" rev-parse --short HEAD 2> /dev/null || echo unknown)$(git -C "$root" diff --quiet 2> /dev/null || echo ' + uncommitted changes')"
    [ -n "${bin[mosquitto]:-}" ] && echo "- mosquitto: $("${bin[mosquitto]}" -h 2>&1 | head -1 | sed 's/^mosquitto //')"
    [ -n "${bin[rumqttd]:-}" ] && echo "- rumqttd: $("${bin[rumqttd]}" --version 2>&1 | head -1)"
    echo "- brokers on CPU 0, generator on CPU 1; $runs run(s) per cell, median shown"
} > "$out/env.md"

# --- the generator's own ceiling -------------------------------------------------
say "generator ceiling against the in-process sink"
taskset -c 0,1 "$load" ceiling --sink-cpu 0 --gen-cpu 1 --duration 2 --tag broker=sink >> "$results" \
    || say "ceiling run reported errors"

# --- the suite -------------------------------------------------------------------
mapfile -t scenarios < <("$load" list "${list[@]}" | cut -d' ' -f1)
for run in $(seq "$runs"); do
    for scenario in "${scenarios[@]}"; do
        for name in "${active[@]}"; do
            say "run $run/$runs: $scenario on $name"
            if ! start "$name"; then
                echo "scenario=$scenario broker=$name run=$run ok=false error=broker_did_not_accept_connections" >> "$results"
                stop
                continue
            fi
            line=$(taskset -c 1 "$load" run "$scenario" --port "$p4" --port5 "$p5" --broker-pid "$bpid" \
                "${timing[@]}" --tag "broker=$name" --tag "run=$run" 2>> "$out/brokk-load.log") || true
            if [ -z "$line" ]; then
                line="scenario=$scenario broker=$name run=$run ok=false error=generator_printed_nothing"
            fi
            if ! kill -0 "$bpid" 2> /dev/null; then
                line="${line/ ok=true/ ok=false} broker_exited=1"
                say "$name exited during $scenario (see $out/$name.log)"
            fi
            echo "$line" >> "$results"
            stop
        done
    done
done

columns=()
for name in "${active[@]}"; do
    case $name in
        brokk-tokio) columns+=(--column "brokk-tokio*=brokk (tokio)") ;;
        brokk-smol) columns+=(--column "brokk-smol*=brokk (smol)") ;;
        *) columns+=(--column "$name=$name") ;;
    esac
done
"$load" report "$results" "${columns[@]}" > "$out/table.md"
cat "$out/env.md"
echo
cat "$out/table.md"
say "records: $results; broker logs and configs: $out"
