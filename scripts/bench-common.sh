# Shared by scripts/bench-push and scripts/bench-range (sourced, not run): the 1 GiB blob they
# push, starting a Kura binary on a fresh data directory, and opening an upload for one PUT.

# Sets `blob` (a 1 GiB file of random bytes, made once) and `digest`.
bench_blob() {
    blob=/var/tmp/kura-bench-push/blob-1g.bin
    if [ ! -s "$blob" ]; then
        mkdir -p "$(dirname "$blob")"
        echo "==> writing a 1 GiB random blob to $blob"
        head -c $((1024 * 1024 * 1024)) /dev/urandom > "$blob"
    fi
    digest="sha256:$(sha256sum "$blob" | cut -d' ' -f1)"
}

# start_kura BINARY DATA_DIR PORT DURABILITY LOG [ENV=V,...]: starts the server on an empty
# data directory and waits for /v2/; sets `kura_pid`.
start_kura() {
    local bin=$1 data=$2 port=$3 durability=$4 log=$5 envs=${6:-} i
    rm -rf "$data"; mkdir -p "$data"
    # shellcheck disable=SC2086
    env RUST_LOG=warn ${envs//,/ } "$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" \
        --durability "$durability" > "$log" 2>&1 &
    kura_pid=$!
    for i in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/v2/" && return; sleep 0.05; done
    echo "bench: $bin did not answer on port $port (see $log)" >&2
    return 1
}

# upload_url PORT REPOSITORY: opens an upload and prints the URL that completes it with one
# PUT of the blob (POST, then the Location with ?digest=), the request regbench's push makes.
upload_url() {
    local port=$1 repo=$2 loc sep
    loc=$(curl -si -X POST "http://127.0.0.1:$port/v2/$repo/blobs/uploads/" \
        | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
    sep='?'; [[ $loc == *\?* ]] && sep='&'
    echo "http://127.0.0.1:$port${loc}${sep}digest=$digest"
}
