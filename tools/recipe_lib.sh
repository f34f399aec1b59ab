# Shared by the world recipes (tools/train_world.sh, tools/train_world_vz.sh); source it after setting RUNS.
# Each stage's log goes to $RUNS/logs/NAME.log and its wall time (and the machine load around it) to $RUNS/times.tsv.
mkdir -p "$RUNS/logs"
TIMES="$RUNS/times.tsv"
[ -f "$TIMES" ] || printf 'stage\tseconds\tload_before\tload_after\n' > "$TIMES"

STARTED=0
want() {  # want STAGE: true from the stage named by FROM on (every stage when FROM is unset)
    if [ -z "${FROM:-}" ] || [ "$FROM" = "$1" ]; then STARTED=1; fi
    [ "$STARTED" = 1 ]
}

timed() {  # timed NAME COMMAND...: run, log, and record the wall time and the machine load around it
    local name=$1; shift
    local load_before start seconds
    load_before=$(cut -d' ' -f1 /proc/loadavg)
    start=$(date +%s.%N)
    "$@" > "$RUNS/logs/$name.log" 2>&1
    seconds=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")
    printf '%s\t%s\t%s\t%s\n' "$name" "$seconds" "$load_before" "$(cut -d' ' -f1 /proc/loadavg)" >> "$TIMES"
    echo "$name: $seconds s"
}
