#!/usr/bin/env bash
# P8: requests per second of the web example's `GET /users/{id}` for a hot cached user,
# hits taken inline (`Db::find_async`) against every read through `spawn_blocking`
# (`--blocking`, the way before the async front). Load generator: wrk on loopback
# (`apt-get install wrk`). Prints one line per run and a summary; asserts nothing.
#
#   cargo build --release --features tokio --example web
#   bash benches/p8.sh                     # 5 runs of each mode, 10 s each, alternating
#   P8_RUNS=3 P8_SECONDS=5 P8_CONNECTIONS=64 P8_THREADS=1 bash benches/p8.sh
#
# Each run starts a fresh server (SQLite, users 1-3 seeded and cached at commit), checks
# that GET /users/1 answers 200, runs wrk against it and stops the server. The modes
# alternate within each round, so that other load on the machine falls on both alike.
set -euo pipefail
cd "$(dirname "$0")/.."

# P8_AUTOGROUP_NICE=-10: run in a new session whose scheduler autogroup has this niceness,
# so that on a machine shared with other sessions the benchmark gets the CPU it needs
# (root; it takes CPU from the other sessions while it runs: keep such runs short).
if [[ -n ${P8_AUTOGROUP_NICE:-} && -z ${P8_IN_GROUP:-} ]]; then
    exec setsid -w env P8_IN_GROUP=1 bash "$0" "$@"
fi
if [[ -n ${P8_IN_GROUP:-} ]]; then
    echo "$P8_AUTOGROUP_NICE" >/proc/self/autogroup
    echo "scheduler autogroup: $(cat /proc/self/autogroup)"
fi

runs=${P8_RUNS:-5}
seconds=${P8_SECONDS:-10}
connections=${P8_CONNECTIONS:-64}
threads=${P8_THREADS:-1}
port=${P8_PORT:-38088}
# The server and wrk run at this niceness (root only for a negative value; P8_NICE=0 to
# run as is). With kernel.sched_autogroup_enabled=1, nice ranks them only against this
# session's own processes (builds started from the same shell), not against other sessions.
nice=${P8_NICE:--10}
server=target/release/examples/web
url="http://127.0.0.1:$port/users/1"

command -v wrk >/dev/null || { echo "P8 needs wrk: apt-get install -y wrk" >&2; exit 1; }
[[ -x $server ]] || { echo "build it first: cargo build --release --features tokio --example web" >&2; exit 1; }

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "nice -n $nice wrk -t$threads -c$connections -d${seconds}s --latency $url"
printf '%-5s %-9s %12s %10s %10s %10s %14s %8s %8s\n' run mode "requests/s" p50 p99 max "req/CPU-second" "cores" "runq"
echo "(cores: CPU the server used per second of the run; runq: seconds per second its threads"
echo " were runnable but waiting for a CPU, summed over threads)"

declare -A all cpu
# utime + stime of every thread of process $1, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Nanoseconds the threads of process $1 spent runnable but waiting for a CPU (schedstat).
runq_wait() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{w += $2} END {printf "%.0f", w}'; }
run_one() {
    local round=$1 mode=$2 flag=()
    [[ $mode == blocking ]] && flag=(--blocking)
    RUST_LOG=warn nice -n "$nice" "$server" --listen "127.0.0.1:$port" "${flag[@]}" >/tmp/p8-server.$$.log 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
        curl -fs "$url" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fs "$url" >/dev/null || { echo "server did not answer; its log:" >&2; cat /tmp/p8-server.$$.log >&2; kill "$pid"; exit 1; }
    local out cpu0 cpu1 wait0 wait1
    cpu0=$(cpu_ticks "$pid")
    wait0=$(runq_wait "$pid")
    out=$(nice -n "$nice" wrk "-t$threads" "-c$connections" "-d${seconds}s" --latency "$url")
    cpu1=$(cpu_ticks "$pid")
    wait1=$(runq_wait "$pid")
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    local rps p50 p99 max requests per_cpu cpu_s wait_s
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    max=$(awk '$1 == "Latency" {print $4; exit}' <<<"$out")
    requests=$(awk '/requests in/ {print $1; exit}' <<<"$out")
    # Requests served per second of CPU time the server used (all its threads, user +
    # system): what the machine's other load cannot take away from either mode.
    per_cpu=$(awk -v r="$requests" -v t=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" \
        'BEGIN {printf "%.0f", (t > 0 ? r / (t / hz) : 0)}')
    # CPU seconds the server got, and seconds its threads waited for one, per second of run.
    cpu_s=$(awk -v t=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" -v d="$seconds" 'BEGIN {printf "%.2f", t / hz / d}')
    wait_s=$(awk -v w=$((wait1 - wait0)) -v d="$seconds" 'BEGIN {printf "%.2f", w / 1e9 / d}')
    if grep -q "Non-2xx" <<<"$out"; then
        echo "run $round $mode: wrk saw non-2xx responses:" >&2
        echo "$out" >&2
        exit 1
    fi
    printf '%-5s %-9s %12.0f %10s %10s %10s %14s %8s %8s\n' "$round" "$mode" "$rps" "$p50" "$p99" "$max" "$per_cpu" "$cpu_s" "$wait_s"
    all[$mode]+="$rps "
    cpu[$mode]+="$per_cpu "
}

for round in $(seq "$runs"); do
    # Alternate which mode goes first.
    if ((round % 2)); then order=(inline blocking); else order=(blocking inline); fi
    for mode in "${order[@]}"; do
        run_one "$round" "$mode"
    done
done
rm -f /tmp/p8-server.$$.log

summary() {
    tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g |
        awk '{v[NR]=$1; s+=$1} END {printf "median %.0f, min %.0f, max %.0f, mean %.0f", (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2), v[1], v[NR], s/NR}'
}
echo
echo "inline:   $(summary "${all[inline]}") requests/s"
echo "blocking: $(summary "${all[blocking]}") requests/s"
med() { summary "$1" | awk '{print $2}' | tr -d ,; }
awk -v a="$(med "${all[inline]}")" -v b="$(med "${all[blocking]}")" \
    'BEGIN {printf "inline / blocking (medians): %.2fx\n", a / b}'
echo "inline:   $(summary "${cpu[inline]}") requests per CPU-second of the server"
echo "blocking: $(summary "${cpu[blocking]}") requests per CPU-second of the server"
awk -v a="$(med "${cpu[inline]}")" -v b="$(med "${cpu[blocking]}")" \
    'BEGIN {printf "inline / blocking, per CPU-second (medians): %.2fx\n", a / b}'
echo "machine after: load average $(cut -d' ' -f1-3 /proc/loadavg)"
