# Sourced by the study scripts. step NAME COMMAND...: run COMMAND unless $OUT/NAME.done exists,
# then append its wall time to $OUT/times.txt and mark it done (a rerun skips finished steps).
step() {
    local name=$1
    shift
    if [ -e "$OUT/$name.done" ]; then
        echo "$name: done earlier" >&2
        return
    fi
    local start
    start=$(date +%s)
    "$@"
    echo "$name $(($(date +%s) - start)) s  $(date -u +%FT%TZ)" >>"$OUT/times.txt"
    touch "$OUT/$name.done"
}
