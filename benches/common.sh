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
