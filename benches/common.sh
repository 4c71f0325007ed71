# Shell helpers the benchmark scripts share (sourced, not run).

# A progress line on stderr.
log() { echo "== $*" >&2; }

# Waits for a line matching $2 in file $1 (up to 30 s) and prints it.
wait_line() {
    local file="$1" pattern="$2" i
    for i in $(seq 300); do
        if grep -q "$pattern" "$file" 2>/dev/null; then
            grep -m1 "$pattern" "$file"
            return 0
        fi
        sleep 0.1
    done
    echo "timed out waiting for '$pattern' in $file:" >&2
    cat "$file" >&2
    return 1
}

# CPU seconds (user + system, every thread) process $1 has used so far.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}

# CPU seconds process $1 has used so far in user mode and in the kernel: "user system".
cpu_user_system() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f %.2f\n", $14 / hz, $15 / hz }' "/proc/$1/stat"
}

# TCP segments this network namespace has sent so far (`OutSegs` of /proc/net/snmp). Over a
# loopback run both directions count, so the delta over a run is every segment of its
# connections, and per request it says how many requests one send carried on average.
tcp_out_segments() {
    awk '$1 == "Tcp:" { if (!seen) { for (i = 2; i <= NF; i++) if ($i == "OutSegs") col = i; seen = 1 } else print $col }' /proc/net/snmp
}

# CPU seconds (user + system) of each thread of process $1 so far, as `name=seconds` words, one
# per thread (a name may repeat: several threads can share one; spaces in a name become `_`).
thread_cpu_seconds() {
    local hz task
    hz="$(getconf CLK_TCK)"
    for task in /proc/"$1"/task/*; do
        # The fields after the name's closing parenthesis: utime and stime are the 12th and 13th.
        awk -v hz="$hz" -v name="$(tr ' ' _ < "$task/comm" 2>/dev/null)" \
            '{ sub(/^.*\) /, ""); split($0, f, " "); printf "%s=%.2f ", name, (f[12] + f[13]) / hz }' \
            "$task/stat" 2>/dev/null
    done
}

# thread_sleeps PID: `name=count` of each thread's voluntary context switches (the times it
# blocked: for a glommio shard, each time its executor went to sleep and was woken).
thread_sleeps() {
    local task
    for task in /proc/"$1"/task/*; do
        awk -v name="$(tr ' ' _ < "$task/comm" 2>/dev/null)" \
            '/^voluntary_ctxt_switches:/ { printf "%s=%d ", name, $2 }' "$task/status" 2>/dev/null
    done
}

# bench_config FILE SERVER CAPACITY FILL: writes a config with the `server:` line SERVER (a
# flow mapping) and the one policy every end-to-end bench enforces: CAPACITY tokens per user,
# FILL more every second, on control point `bench`.
bench_config() {
    cat > "$1" <<YAML
server: $2
policies:
  - policy_name: bench
    rate_limiter:
      bucket_capacity: $3
      fill_amount: $4
      parameters: { interval: 1s, limit_by_label_key: user }
      selectors: [ { control_point: bench } ]
YAML
}
