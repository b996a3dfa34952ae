#!/usr/bin/env bash
# Far users and a regional cache (issue 5): pull times over a simulated WAN, MSR's cache
# node (as the target of MSR's redirects, and as the region's registry endpoint) next to
# Distribution as a pull-through cache, and the cache node's blob throughput.
#
# Links are latency_proxy.py instances (one-way --delay-ms, --bw shared per direction):
#   MSR           user -> MSR through link A; cache node (`msr cache`) -> MSR through
#                 link B; user -> cache node direct. MSR's public URL (MSR_PUBLIC_URL) is
#                 link A's address, so every token realm MSR names is reached over A.
#     redirect    the user pulls from MSR (over A); MSR answers the blob GETs of a user
#                 whose default cache is the node with a 307 to the node (grant in the URL).
#     endpoint    the user pulls from the node (`docker://<node>/...` with credentials):
#                 the node verifies MSR's tokens itself, resolves the tag at MSR over B on
#                 every pull, serves blobs from its store and fills misses over B. Token
#                 relay on (MSR_CACHE_TOKEN_RELAY=1, the default): the node's challenge
#                 names its own /auth/token, relayed to MSR over B on kept-alive
#                 connections. Relay off: a second node process on the same data dir with
#                 MSR_CACHE_TOKEN_RELAY=0, whose challenge names MSR's token service, so
#                 the client fetches its token over A.
#   Distribution  user -> central docker-registry through link A'; a second docker-registry
#                 with `proxy: remoteurl:` (pull-through cache) -> central through link B';
#                 user -> pull-through cache direct.
# Pulls (timed; a fresh destination each time, so nothing is cached on the client):
# `skopeo copy docker://... oci:<fresh layout>` and/or `podman --storage-driver vfs --root
# <fresh> pull` (--clients). Cases: direct from the central registry over A ("far"); MSR
# redirect cold, warm (the same image again) and pre-warmed (POST
# /api/v0/content_caches/<id>/prewarm, wait until the node has fetched every blob and
# link B is idle, then pull); MSR endpoint cold, warm, and warm with the relay off;
# Distribution's pull-through cache cold and warm. Every direct, cold and pre-warmed case
# uses a new image (new random seed), pushed to the central registry locally, not through
# a link. WAN counters: the links' own (latency_proxy.py --stats-file): bytes in both
# directions, new TCP connections and HTTP requests, per link.
# Image shapes: --shapes "1x1 10x1 5x40" (LAYERSxMiB each); default one shape from
# --layers/--layer-mb. Every shape and client gets every case in every round.
# Blob throughput: one --blob-mb layer, from the cache node (a hit; the URL is MSR's 307
# Location with its grant) and from nginx (the same bytes as a static file, sendfile on);
# C concurrent curl clients x --reps GETs; aggregate MiB/s; median of --tput-rounds.
#
# Usage: ./geo.sh [--layers 5] [--layer-mb 40] [--shapes "1x1 10x1 5x40"] [--clients "skopeo podman"]
#          [--delay-ms 100] [--bw 6M] [--rounds 1] [--warm-reps 1] [--blob-mb 200] [--conc "1 8"] [--reps 2]
#          [--tput-rounds 3] [--gzip-level 0] [--dest oci|dir] [--no-dist] [--no-endpoint]
#          [--no-prewarm] [--no-tput] [--no-pulls] [--out DIR | --no-save] [common options, see below]
#   --delay-ms   one way (100 = 200 ms round trip);  --bw  per link and direction, shared
#                by the link's connections (6M = 6 MiB/s, about 50 Mbit/s)
#   --rounds     rounds of the WAN pulls (median; each round uses new images)
#   --warm-reps  warm pulls per round and mode (cheap: no image crosses the WAN), all in the median;
#                the endpoint's relay on / off pulls alternate
#   --shapes     image shapes, e.g. "1x1 10x1 5x40" (overrides --layers/--layer-mb)
#   --clients    skopeo (default), podman, or both: "skopeo podman"
#   --dest       skopeo's destination: oci (default; layers in parallel) or dir (one by one)
#   --no-dist / --no-endpoint / --no-prewarm / --no-pulls / --no-tput   skip Distribution /
#                the endpoint cases / the pre-warmed case / all WAN pulls / the throughput part
#   --out DIR    results go to DIR/<UTC time>-geo.md (+ .log); default bench/results
# Defaults: 5 x 40 MiB image, skopeo, 200 ms RTT, 6 MiB/s; about 8-10 minutes on 2 cores.
# The issue's table: ./geo.sh --shapes "1x1 10x1 5x40" --clients "skopeo podman" --no-prewarm
#   --no-tput (about 20 minutes)
# Smoke test (~2 min): ./geo.sh --layer-mb 4 --delay-ms 20 --bw 50M --no-tput --no-save
# Needs: bash, python3, curl, skopeo, docker-registry, nginx (throughput), podman (with
# --clients podman), msr (MSR, its Celery worker and the cache node are started here on a
# scratch data dir; --msr-url is not supported).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

ORIG_ARGS="$*"
LAYERS=5; LAYER_MB=40; SHAPES=""; CLIENTS=skopeo; WARM_REPS=1; DELAY_MS=100; BW=6M; ROUNDS=1; GZIP_LEVEL=0
BLOB_MB=200; CONC="1 8"; REPS=2; TPUT_ROUNDS=3
DO_DIST=1; DO_TPUT=1; DO_PULLS=1; DO_ENDPOINT=1; DO_PREWARM=1
OUT="$BENCH_DIR/results"; SAVE=1; DEST=oci
while [ $# -gt 0 ]; do
  case $1 in
    --layers) LAYERS=$2; shift 2;;
    --layer-mb) LAYER_MB=$2; shift 2;;
    --shapes) SHAPES=$2; shift 2;;
    --clients) CLIENTS=$2; shift 2;;
    --warm-reps) WARM_REPS=$2; shift 2;;
    --delay-ms) DELAY_MS=$2; shift 2;;
    --bw) BW=$2; shift 2;;
    --rounds) ROUNDS=$2; shift 2;;
    --gzip-level) GZIP_LEVEL=$2; shift 2;;
    --blob-mb) BLOB_MB=$2; shift 2;;
    --conc) CONC=$2; shift 2;;
    --reps) REPS=$2; shift 2;;
    --tput-rounds) TPUT_ROUNDS=$2; shift 2;;
    --dest) DEST=$2; shift 2;;
    --no-dist) DO_DIST=0; shift;;
    --no-endpoint) DO_ENDPOINT=0; shift;;
    --no-prewarm) DO_PREWARM=0; shift;;
    --no-tput) DO_TPUT=0; shift;;
    --no-pulls) DO_PULLS=0; DO_DIST=0; shift;;
    --out) OUT=$2; shift 2;;
    --no-save) SAVE=0; shift;;
    -h|--help) usage; exit 0;;
    *) common_opt "$@" || die "unknown argument $1 (see --help)"; shift "$COMMON_SHIFT";;
  esac
done
for v in LAYERS ROUNDS REPS TPUT_ROUNDS GZIP_LEVEL WARM_REPS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v: ${!v} is not a whole number"
done
[ "$LAYERS" -ge 1 ] && [ "$ROUNDS" -ge 1 ] && [ "$REPS" -ge 1 ] && [ "$TPUT_ROUNDS" -ge 1 ] && [ "$WARM_REPS" -ge 1 ] \
  || die "--layers, --rounds, --reps, --tput-rounds and --warm-reps must be at least 1"
for v in LAYER_MB BLOB_MB DELAY_MS; do [[ ${!v} =~ ^[0-9]+([.][0-9]+)?$ ]] || die "bad value ${!v} for ${v}"; done
[ -n "$SHAPES" ] || SHAPES="${LAYERS}x${LAYER_MB}"
for sh in $SHAPES; do
  [[ $sh =~ ^[1-9][0-9]*x[0-9]+([.][0-9]+)?$ ]] || die "--shapes: LAYERSxMiB words, e.g. \"1x1 10x1 5x40\" (got $sh)"
done
for c in $CLIENTS; do case $c in skopeo|podman) ;; *) die "--clients: skopeo and/or podman (got $c)";; esac; done
[ -n "$CLIENTS" ] || die "--clients: skopeo and/or podman"
[ "$DEST" = oci ] || [ "$DEST" = dir ] || die "--dest: oci or dir"
[[ $BW =~ ^[0-9]+([.][0-9]+)?[KMG]?$ ]] || die "--bw: a rate like 6M (MiB/s), 512K"
for c in $CONC; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "--conc: whole numbers, e.g. \"1 8\""; done
[ -z "$MSR_URL_ARG" ] || die "geo.sh starts its own MSR, worker and cache node; --msr-url is not supported"
[ "$MSR_DB" = sqlite ] || die "geo.sh runs MSR on SQLite only"
[ -n "$MSR_BIN" ] && command -v "$MSR_BIN" >/dev/null 2>&1 || die "msr command not found (--msr-bin)"
need "$PYTHON" curl skopeo sha256sum timeout "$REGISTRY_BIN"
[ "$DO_TPUT" = 0 ] || need "$NGINX_BIN"
[[ " $CLIENTS " != *" podman "* ]] || [ "$DO_PULLS" = 0 ] || need podman

TS=$(date -u +%Y%m%dT%H%M%SZ)
if [ "$SAVE" = 1 ]; then
  mkdir -p "$OUT"
  RES="$OUT/$TS-geo.md"; LOGF="$OUT/$TS-geo.log"
  exec 2> >(tee -a "$LOGF" >&2)
fi

CACHE_PID=""; CACHE2_PID=""; WORKER_PID=""
geo_cleanup() {
  local rc=$? f
  if [ "$rc" != 0 ] && [ -n "$BENCH_TMP" ]; then
    for f in msr.log worker.log cache.log cache2.log; do
      [ -s "$BENCH_TMP/$f" ] || continue
      echo "--- last lines of $f:" >&2; tail -n 15 "$BENCH_TMP/$f" >&2
    done
  fi
  stop_gunicorn "$CACHE_PID"; CACHE_PID=""
  stop_gunicorn "$CACHE2_PID"; CACHE2_PID=""
  [ -z "$WORKER_PID" ] || stop_pid "$WORKER_PID" 30
  WORKER_PID=""
  bench_cleanup
}
bench_mktemp
trap geo_cleanup EXIT
trap 'exit 130' INT TERM

fmt2() { awk -v v="$1" 'BEGIN{ if (v=="" || v=="n/a" || v=="nan") print "n/a"; else printf "%.2f\n", v }'; }
mib() { awk -v v="$1" 'BEGIN{ if (v=="" || v=="n/a") print "n/a"; else printf "%.1f\n", v / 1048576 }'; }
wan() { awk -v v="$1" 'BEGIN{ if (v=="" || v=="n/a") print "n/a"; else if (v < 1048576) printf "%.1f KiB\n", v / 1024; else printf "%.1f MiB\n", v / 1048576 }'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{ printf "%.3f\n", b - a }'; }

# -- links ---------------------------------------------------------------------------
# start_link NAME TARGET_PORT -> LINK_PORT; counters in $BENCH_TMP/link-NAME.json, one line
# per HTTP request in $BENCH_TMP/link-NAME.req (the target need not be up yet: the proxy
# connects to it for each connection it accepts)
start_link() {
  local name=$1 target=$2 port i
  port=$(free_port)
  "$PYTHON" "$BENCH_DIR/latency_proxy.py" --listen "127.0.0.1:$port" --target "127.0.0.1:$target" \
    --delay-ms "$DELAY_MS" --shared-bw "$BW" --stats-file "$BENCH_TMP/link-$name.json" \
    --stats-interval 0.2 --request-log "$BENCH_TMP/link-$name.req" >"$BENCH_TMP/link-$name.log" 2>&1 &
  local pid=$!
  BENCH_PIDS+=("$pid")
  for i in $(seq 100); do
    [ -s "$BENCH_TMP/link-$name.json" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$BENCH_TMP/link-$name.log" >&2; die "latency_proxy $name exited"; }
    sleep 0.1
  done
  [ -s "$BENCH_TMP/link-$name.json" ] || die "latency_proxy $name did not start"
  LINK_PORT=$port
}
link_bytes() {  # link_bytes NAME... -> bytes through these links so far, both directions
  "$PYTHON" -c 'import json,sys
t, names = sys.argv[1], sys.argv[2:]
print(sum(d["up"] + d["down"] for d in (json.load(open("%s/link-%s.json" % (t, n))) for n in names)))' \
    "$BENCH_TMP" "$@" || die "cannot read the counters of links $*"
}
# snap LINK_A LINK_B -> "bytes(A+B) connections(A) connections(B) requests(A) requests(B)
# request-log-lines(A) request-log-lines(B)" so far
snap() {
  "$PYTHON" -c 'import json,os,sys
t = sys.argv[1]
a, b = (json.load(open("%s/link-%s.json" % (t, n))) for n in sys.argv[2:4])
def lines(n):
    try:
        with open("%s/link-%s.req" % (t, n), "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0
print(a["up"] + a["down"] + b["up"] + b["down"], a["total"], b["total"], a["requests"], b["requests"],
      lines(sys.argv[2]), lines(sys.argv[3]))' \
    "$BENCH_TMP" "$1" "$2" || die "cannot read the counters of links $*"
}
# wait_idle NAME...: until the links carry less than 2 KiB per half second for 1.5 s (max
# 30 min): the cache node keeps a connection to MSR open with a small request every few
# seconds while its region pulls, which is not traffic to wait for;
# sets IDLE_TAIL = seconds from the call to the last byte seen
wait_idle() {
  local t0=$EPOCHREALTIME last cur tlast=$EPOCHREALTIME stable=0 i
  sleep 0.3
  last=$(link_bytes "$@")
  for i in $(seq 3600); do
    sleep 0.5
    cur=$(link_bytes "$@")
    if [ $((cur - last)) -lt 2048 ]; then stable=$((stable + 1)); last=$cur; [ "$stable" -ge 3 ] && break
    else stable=0; last=$cur; tlast=$EPOCHREALTIME; fi
  done
  [ "$stable" -ge 3 ] || die "links $* still busy after 30 min"
  IDLE_TAIL=$(awk -v a="$t0" -v b="$tlast" 'BEGIN{ d = b - a; printf "%.1f\n", d < 0.5 ? 0 : d }')
}

# -- images, pushes, pulls ------------------------------------------------------------
IMG_N=0
make_image() {  # make_image -> IMG (OCI layout, current shape), IMG_BLOBS, IMG_BYTES (config + layers)
  IMG_N=$((IMG_N + 1)); IMG="$BENCH_TMP/img$IMG_N"
  "$PYTHON" "$BENCH_DIR/mkimage.py" --layers "$LAYERS" --size-mb "$LAYER_MB" --compression gzip \
    --gzip-level "$GZIP_LEVEL" --out "$IMG" --tag v1 >"$IMG.json" 2>/dev/null || die "mkimage.py failed"
  read -r IMG_BLOBS IMG_BYTES < <("$PYTHON" -c 'import json,os,sys
d = json.load(open(sys.argv[1]))
cfg = os.path.getsize(os.path.join(d["layout"], "blobs", "sha256", d["config_digest"].split(":")[1]))
print(len(d["layers"]) + 1, cfg + sum(l["size"] for l in d["layers"]))' "$IMG.json")
}
push() {  # push HOSTPORT REPO [CREDS]: the current IMG as REPO:v1, locally (no link)
  local args=()
  [ -z "${3:-}" ] || args=(--dest-creds "$3")
  timeout 1800 skopeo copy --quiet --dest-tls-verify=false "${args[@]}" "oci:$IMG:v1" "docker://$1/$2:v1" \
    >"$BENCH_TMP/push.out" 2>&1 || { cat "$BENCH_TMP/push.out" >&2; die "push of $2 to $1 failed"; }
}
push_msr() {  # push_msr REPO: push to MSR as admin, make admin/REPO public, drop the layout
  push "$MSR_HOSTPORT" "admin/$1" "$MSR_CREDS"
  api PATCH "repositories/admin/$1" '{"visibility":"public"}' >/dev/null
  rm -rf "$IMG"
}
PULL_N=0
# pull_failed DIR: a failed pull: fatal, unless PULL_TRY is set (then PULL_ERR = the client's
# last output lines, the destination is removed, and it returns 1)
pull_failed() {
  cat "$1.out" >&2
  [ -n "${PULL_TRY:-}" ] || die "pull failed: $PULL_CMD"
  PULL_ERR=$(tail -n 2 "$1.out" | tr '\n' ' ')
  rm -rf "$1" "$1.out"
  return 1
}
# pull REF [CREDS] -> PULL_S: a timed pull by $CLIENT into a fresh destination, checked:
#   skopeo  `skopeo copy docker://REF oci:<fresh layout>:v1` (or dir:), blob files counted
#   podman  `podman --storage-driver vfs --root <fresh> --runroot <fresh> pull`, then the
#           image's layer count read back from that storage
pull() {
  local ref=$1 args=() dir t0 t1 n want dst
  PULL_N=$((PULL_N + 1)); dir="$BENCH_TMP/pull$PULL_N"
  if [ "$CLIENT" = podman ]; then
    [ -z "${2:-}" ] || args=(--creds "$2")
    local pm=(podman --storage-driver vfs --root "$dir/root" --runroot "$dir/run" --tmpdir "$dir/tmp"
              --events-backend file --cgroup-manager cgroupfs)
    mkdir -p "$dir"
    sync
    t0=$EPOCHREALTIME
    PULL_CMD="podman --storage-driver vfs --root <fresh> --runroot <fresh> pull --tls-verify=false${2:+ --creds ${2%%:*}:<password>} $ref"
    timeout 1800 "${pm[@]}" pull --quiet --tls-verify=false "${args[@]}" "$ref" >"$dir.out" 2>&1 \
      || { pull_failed "$dir" || return 1; }
    t1=$EPOCHREALTIME
    n=$("${pm[@]}" image inspect --format '{{len .RootFS.Layers}}' "$ref" 2>>"$dir.out") \
      || { cat "$dir.out" >&2; die "podman image inspect $ref failed"; }
    [ "$n" = "$LAYERS" ] || die "podman pull of $ref: $n layers in its storage, expected $LAYERS"
  else
    [ -z "${2:-}" ] || args=(--src-creds "$2")
    if [ "$DEST" = oci ]; then dst="oci:$dir:v1"; want=$((LAYERS + 2)); else dst="dir:$dir"; want=$((LAYERS + 1)); fi
    sync   # no pull pays for the write-back of the previous one
    t0=$EPOCHREALTIME
    PULL_CMD="skopeo copy --src-tls-verify=false${2:+ --src-creds ${2%%:*}:<password>} docker://$ref ${dst%%:*}:<fresh dir>"
    timeout 1800 skopeo copy --quiet --src-tls-verify=false "${args[@]}" "docker://$ref" "$dst" \
      >"$dir.out" 2>&1 || { pull_failed "$dir" || return 1; }
    t1=$EPOCHREALTIME
    # dir: holds config + layers named by digest; an oci: layout holds them and the manifest
    # under blobs/sha256
    n=$(find "$dir" -type f -regextype posix-extended -regex '.*/[0-9a-f]{64}' | wc -l)
    [ "$n" = "$want" ] || die "pull of $ref: $n blobs in $dir, expected $want"
  fi
  rm -rf "$dir" "$dir.out"
  PULL_S=$(elapsed "$t0" "$t1")
}

# -- MSR, its worker, the cache node --------------------------------------------------
msr_env() {  # MSR_ENV: env arguments for msr commands (scratch data dir, nothing inherited)
  msr_env_unset; MSR_ENV=("${MSR_ENV_UNSET[@]}")
}
start_msr_geo() {  # start_msr_geo PORT PUBLIC_URL
  local port=$1 pw opts=()
  pw="bench-$(rnd)"
  msr_env
  # the cache nodes run on loopback, which the egress policy opens only when told to;
  # MSR_PUBLIC_URL: the token realm MSR names is link A's address whoever asks (the node
  # with the relay off passes MSR's challenge on to the client)
  MSR_ENV+=("MSR_DATA_DIR=$BENCH_TMP/msr-data" "MSR_ADMIN_PASSWORD=$pw" "MSR_CACHE_GRANT_TTL=3600"
           "MSR_OUTBOUND_ALLOW=127.0.0.1/32" "MSR_PUBLIC_URL=$2")
  [ -z "$MSR_WORKERS" ] || opts+=(--workers "$MSR_WORKERS")
  [ -z "$MSR_THREADS" ] || opts+=(--threads "$MSR_THREADS")
  # every msr process runs in the scratch dir: with the filesystem broker, Kombu writes a
  # control/ folder into the working directory of whoever publishes or consumes tasks
  (cd "$BENCH_TMP" && env "${MSR_ENV[@]}" "$MSR_BIN" manage migrate -v 0) >"$BENCH_TMP/msr.log" 2>&1 \
    || die "msr manage migrate failed (see $BENCH_TMP/msr.log)"
  (cd "$BENCH_TMP" && env "${MSR_ENV[@]}" "$MSR_BIN" manage adduser admin --admin --password "$pw") \
    >>"$BENCH_TMP/msr.log" 2>&1 || die "msr manage adduser failed"
  (cd "$BENCH_TMP" && exec env "${MSR_ENV[@]}" "$MSR_BIN" serve --bind "127.0.0.1:$port" "${opts[@]}") \
    >>"$BENCH_TMP/msr.log" 2>&1 &
  MSR_PID=$!; MSR_OWNED=1
  MSR_URL="http://127.0.0.1:$port"; MSR_HOSTPORT="127.0.0.1:$port"; MSR_CREDS="admin:$pw"; MSR_USER=admin
  wait_http "$MSR_URL/v2/" 120 "$MSR_PID" "$BENCH_TMP/msr.log"
  # the worker runs the pre-warm tasks
  (cd "$BENCH_TMP" && exec env "${MSR_ENV[@]}" "$MSR_BIN" worker --pool threads --concurrency 4) \
    >"$BENCH_TMP/worker.log" 2>&1 &
  WORKER_PID=$!
  local i
  for i in $(seq 600); do
    grep -q ' ready\.' "$BENCH_TMP/worker.log" 2>/dev/null && break
    kill -0 "$WORKER_PID" 2>/dev/null || { tail -n 30 "$BENCH_TMP/worker.log" >&2; die "msr worker exited"; }
    sleep 0.1
  done
  grep -q ' ready\.' "$BENCH_TMP/worker.log" || die "msr worker not ready after 60 s"
  log "MSR up at $MSR_URL (pid $MSR_PID, public URL $2), worker pid $WORKER_PID"
}
# start_cache_node UPSTREAM_URL LOGNAME [VAR=VALUE...] -> NODE_URL, NODE_PID: `msr cache
# --name asia` on the scratch data dir cache-data (a second node process shares it)
start_cache_node() {
  local up=$1 logname=$2 port; shift 2
  port=$(free_port)
  msr_env
  (cd "$BENCH_TMP" && exec env "${MSR_ENV[@]}" "$@" "$MSR_BIN" cache --name asia --msr "$up" --upstream "$up" \
     --data "$BENCH_TMP/cache-data" --bind "127.0.0.1:$port") >"$BENCH_TMP/$logname.log" 2>&1 &
  NODE_PID=$!
  NODE_URL="http://127.0.0.1:$port"
  wait_http "$NODE_URL/healthz" 60 "$NODE_PID" "$BENCH_TMP/$logname.log"
  log "cache node up at $NODE_URL (pid $NODE_PID${*:+, $*}), upstream $up"
}
cache_stats() {  # -> "hits misses upstream_fetches bytes_from_upstream" of the cache node (its processes share the counters)
  curl -sf --max-time 10 "$CACHE_URL/stats" | "$PYTHON" -c 'import json,sys
d = json.load(sys.stdin); print(d["hits"], d["misses"], d["upstream_fetches"], d["bytes_from_upstream"])' \
    || die "GET $CACHE_URL/stats failed"
}
stats_delta() {  # stats_delta "BEFORE" "AFTER" -> "dhits dmisses dfetches dbytes"
  local -a a=($1) b=($2)
  echo "$((b[0] - a[0])) $((b[1] - a[1])) $((b[2] - a[2])) $((b[3] - a[3]))"
}
# node_wait S0 FIELD MIN -> NODE_DL (array of deltas since S0): counters of a node process land
# when its response ends, so wait up to 10 s for delta[FIELD] >= MIN
node_wait() {
  local i
  for i in $(seq 50); do
    NODE_DL=($(stats_delta "$1" "$(cache_stats)")); [ "${NODE_DL[$2]}" -ge "$3" ] && return 0; sleep 0.2
  done
}

node_log_lines() { local f; for f in cache cache2; do cat "$BENCH_TMP/$f.log" 2>/dev/null | wc -l; done | paste -sd' '; }
node_warnings() {  # node_warnings "LINES" (from node_log_lines) -> the node's warnings since then, "; "-separated
  local -a n=($1); local i=0 f
  for f in cache cache2; do
    tail -n +$((n[i] + 1)) "$BENCH_TMP/$f.log" 2>/dev/null | grep '"level": "\(WARNING\|ERROR\)"' || true
    i=$((i + 1))
  done | "$PYTHON" -c 'import json,sys
out = []
for l in sys.stdin:
    try:
        d = json.loads(l)
    except ValueError:
        continue
    out.append("%s %s %s: %s" % (d.get("time"), d.get("level"), d.get("logger"), d.get("message")))
print("; ".join(out))'
}

# -- Distribution ---------------------------------------------------------------------
start_dist() {  # start_dist NAME PORT [REMOTEURL]: docker-registry, no auth; pull-through cache with REMOTEURL
  local name=$1 port=$2 root="$BENCH_TMP/$1"
  mkdir -p "$root"
  {
    printf 'version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n'
    printf 'storage:\n  filesystem:\n    rootdirectory: %s\n  cache:\n    blobdescriptor: inmemory\n' "$root"
    printf '  maintenance:\n    uploadpurging:\n      enabled: false\n'
    printf 'http:\n  addr: 127.0.0.1:%s\n' "$port"
    [ -z "${3:-}" ] || printf 'proxy:\n  remoteurl: %s\n' "$3"
  } >"$root.yml"
  "$REGISTRY_BIN" serve "$root.yml" >"$root.log" 2>&1 &
  BENCH_PIDS+=("$!")
  wait_http "http://127.0.0.1:$port/v2/" 20 "$!" "$root.log"
}

# -- results --------------------------------------------------------------------------
# Keys "SHAPE,CLIENT,REG,CASE". T/W/CA/CB/RA/RB[key]: space-separated per round: seconds,
# WAN bytes (A + B), new connections over A, over B, HTTP requests over A, over B.
# WREQ[key]: the WAN requests of the last round's pull ("A: GET /v2/ | B: ...").
declare -A T=() W=() CA=() CB=() RA=() RB=() WREQ=() IB=()
LINK_NAMES=()
add() {  # add KEY SECONDS "SNAP_BEFORE" "SNAP_AFTER"
  local -a a=($3) b=($4)
  T[$1]="${T[$1]:-} $2"; W[$1]="${W[$1]:-} $((b[0] - a[0]))"
  CA[$1]="${CA[$1]:-} $((b[1] - a[1]))"; CB[$1]="${CB[$1]:-} $((b[2] - a[2]))"
  RA[$1]="${RA[$1]:-} $((b[3] - a[3]))"; RB[$1]="${RB[$1]:-} $((b[4] - a[4]))"
  # the request lines the links logged between the two snapshots (paths only)
  WREQ[$1]=$(
    for side in 0 1; do
      f="$BENCH_TMP/link-${LINK_NAMES[$side]}.req"
      from=$((a[5 + side] + 1)); to=$((b[5 + side]))
      [ "$to" -ge "$from" ] || continue
      printf '%s: %s; ' "$([ $side = 0 ] && echo A || echo B)" \
        "$(sed -n "${from},${to}p" "$f" | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $3, $4 }')"
    done | sed 's/; $//')
  log "  WAN: $((b[0] - a[0])) bytes; A: $((b[1] - a[1])) connections, $((b[3] - a[3])) requests; B: $((b[2] - a[2])) connections, $((b[4] - a[4])) requests${WREQ[$1]:+ -- ${WREQ[$1]}}"
}
med() { local -n arr=$1; [ -n "${arr[$2]:-}" ] || { echo n/a; return; }; printf '%s\n' ${arr[$2]} | median; }
EXTRA=()   # notes for the report
FAILS=()   # failed pulls (tried once more), for the report

log "scratch dir $BENCH_TMP; shapes $SHAPES (LAYERSxMiB), clients $CLIENTS, links ${DELAY_MS} ms one way, $BW/s shared"

# ===== MSR ==========================================================================
MSR_PORT=$(free_port)
start_link msrA "$MSR_PORT"; MSR_A=$LINK_PORT    # user -> MSR
start_link msrB "$MSR_PORT"; MSR_B=$LINK_PORT    # cache node -> MSR
start_msr_geo "$MSR_PORT" "http://127.0.0.1:$MSR_A"
start_cache_node "http://127.0.0.1:$MSR_B" cache
CACHE_URL=$NODE_URL; CACHE_PID=$NODE_PID; CACHE_HOSTPORT=${CACHE_URL#http://}
if [ "$DO_ENDPOINT" = 1 ] && [ "$DO_PULLS" = 1 ]; then
  # the same node (same data dir, so the same store) with the token relay off
  start_cache_node "http://127.0.0.1:$MSR_B" cache2 MSR_CACHE_TOKEN_RELAY=0
  CACHE2_PID=$NODE_PID; CACHE2_HOSTPORT=${NODE_URL#http://}
fi
CACHE_ID=$(api POST content_caches "{\"name\":\"asia\",\"url\":\"$CACHE_URL\"}" \
  | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
NEAR_CREDS="near:near-$(rnd)"; FAR_CREDS="far:far-$(rnd)"
api POST accounts "{\"name\":\"near\",\"password\":\"${NEAR_CREDS#*:}\"}" >/dev/null
api POST accounts "{\"name\":\"far\",\"password\":\"${FAR_CREDS#*:}\"}" >/dev/null
api PATCH accounts/near/settings '{"defaultContentCache":"asia"}' >/dev/null
log "cache 'asia' registered (id $CACHE_ID); user near -> cache, user far -> no cache"

msr_round() {  # msr_round TAG: every MSR case once for the current shape and client
  local tg=$1 k="$SHAPE,$CLIENT,msr" s0 s1 w0 w1 t0 t1 i
  LINK_NAMES=(msrA msrB)
  # direct, far user (no cache): everything over link A
  make_image; IB[$SHAPE]=$IMG_BYTES; push_msr "geo-direct-$tg"
  s0=$(cache_stats); w0=$(snap msrA msrB)
  pull "127.0.0.1:$MSR_A/admin/geo-direct-$tg:v1" "$FAR_CREDS"
  wait_idle msrA msrB; w1=$(snap msrA msrB); s1=$(cache_stats)
  [ "$s0" = "$s1" ] || die "direct pull by 'far' touched the cache node (stats $s0 -> $s1)"
  log "MSR direct (far) $SHAPE $CLIENT $tg: $PULL_S s"; add "$k,direct" "$PULL_S" "$w0" "$w1"
  # redirect, cold, near user: manifest over A, blobs from the cache node, which fetches over B
  make_image; push_msr "geo-cold-$tg"
  s0=$(cache_stats); w0=$(snap msrA msrB)
  pull "127.0.0.1:$MSR_A/admin/geo-cold-$tg:v1" "$NEAR_CREDS"
  wait_idle msrA msrB; w1=$(snap msrA msrB)
  node_wait "$s0" 2 "$IMG_BLOBS"
  [ "${NODE_DL[2]}" = "$IMG_BLOBS" ] && [ "${NODE_DL[1]}" = "$IMG_BLOBS" ] \
    || die "cold pull through the cache: node misses/upstream fetches +${NODE_DL[1]}/+${NODE_DL[2]}, expected +$IMG_BLOBS each"
  [ "${IDLE_TAIL%.*}" -lt 2 ] || EXTRA+=("MSR redirect cold $SHAPE $CLIENT $tg: links busy ${IDLE_TAIL} s after the pull ended")
  log "MSR redirect cold $SHAPE $CLIENT $tg: $PULL_S s"; add "$k,cold" "$PULL_S" "$w0" "$w1"
  # redirect, warm: the same image again (--warm-reps times)
  for rep in $(seq "$WARM_REPS"); do
    s0=$(cache_stats); w0=$(snap msrA msrB)
    pull "127.0.0.1:$MSR_A/admin/geo-cold-$tg:v1" "$NEAR_CREDS"
    wait_idle msrA msrB; w1=$(snap msrA msrB)
    node_wait "$s0" 0 "$IMG_BLOBS"
    [ "${NODE_DL[0]}" -ge "$IMG_BLOBS" ] && [ "${NODE_DL[2]}" = 0 ] \
      || die "warm pull: node hits/upstream fetches +${NODE_DL[0]}/+${NODE_DL[2]}, expected +$IMG_BLOBS/+0"
    log "MSR redirect warm $SHAPE $CLIENT $tg: $PULL_S s"; add "$k,warm" "$PULL_S" "$w0" "$w1"
  done
  if [ "$DO_PREWARM" = 1 ]; then
    # pre-warmed: a new image, POST prewarm, wait until the node fetched every blob
    make_image; push_msr "geo-prewarm-$tg"
    s0=$(cache_stats); w0=$(snap msrA msrB)
    t0=$EPOCHREALTIME
    api POST "content_caches/$CACHE_ID/prewarm" "{\"repository\":\"admin/geo-prewarm-$tg\",\"tag\":\"v1\"}" >/dev/null
    for i in $(seq 7200); do   # 30 min at most
      NODE_DL=($(stats_delta "$s0" "$(cache_stats)"))
      [ "${NODE_DL[2]}" -ge "$IMG_BLOBS" ] && [ "${NODE_DL[3]}" -ge "$IMG_BYTES" ] && break
      kill -0 "$WORKER_PID" 2>/dev/null || die "msr worker exited"
      sleep 0.25
    done
    t1=$EPOCHREALTIME
    [ "${NODE_DL[2]}" -ge "$IMG_BLOBS" ] && [ "${NODE_DL[3]}" -ge "$IMG_BYTES" ] \
      || die "pre-warm of admin/geo-prewarm-$tg did not complete: upstream fetches +${NODE_DL[2]}, bytes +${NODE_DL[3]} of $IMG_BYTES"
    wait_idle msrB; w1=$(snap msrA msrB)
    log "MSR pre-warm $SHAPE $CLIENT $tg: the node had all $IMG_BLOBS blobs $(elapsed "$t0" "$t1") s after the POST"
    add "$k,prewarm_job" "$(elapsed "$t0" "$t1")" "$w0" "$w1"
    s0=$(cache_stats); w0=$(snap msrA msrB)
    pull "127.0.0.1:$MSR_A/admin/geo-prewarm-$tg:v1" "$NEAR_CREDS"
    wait_idle msrA msrB; w1=$(snap msrA msrB)
    node_wait "$s0" 0 "$IMG_BLOBS"
    [ "${NODE_DL[0]}" -ge "$IMG_BLOBS" ] && [ "${NODE_DL[2]}" = 0 ] \
      || die "pre-warmed pull: node hits/upstream fetches +${NODE_DL[0]}/+${NODE_DL[2]}, expected +$IMG_BLOBS/+0"
    log "MSR pre-warmed $SHAPE $CLIENT $tg: $PULL_S s"; add "$k,prewarmed" "$PULL_S" "$w0" "$w1"
  fi
  [ "$DO_ENDPOINT" = 1 ] || return 0
  # endpoint, cold: a new image, pulled from the node with near's credentials
  make_image; push_msr "geo-ecold-$tg"
  s0=$(cache_stats); w0=$(snap msrA msrB)
  pull "$CACHE_HOSTPORT/admin/geo-ecold-$tg:v1" "$NEAR_CREDS"
  wait_idle msrA msrB; w1=$(snap msrA msrB)
  node_wait "$s0" 2 "$IMG_BLOBS"
  [ "${NODE_DL[2]}" = "$IMG_BLOBS" ] \
    || die "endpoint cold pull: node upstream fetches +${NODE_DL[2]}, expected +$IMG_BLOBS"
  [ "${IDLE_TAIL%.*}" -lt 2 ] || EXTRA+=("MSR endpoint cold $SHAPE $CLIENT $tg: links busy ${IDLE_TAIL} s after the pull ended")
  log "MSR endpoint cold $SHAPE $CLIENT $tg: $PULL_S s"; add "$k,ecold" "$PULL_S" "$w0" "$w1"
  # endpoint, warm: the same image again, token relay on, then off (the second node process),
  # alternating --warm-reps times
  local hp case attempt nodelog nodelines rep
  for rep in $(seq "$WARM_REPS"); do for case in ewarm ewarm_norelay; do
    if [ "$case" = ewarm ]; then hp=$CACHE_HOSTPORT; else hp=$CACHE2_HOSTPORT; fi
    for attempt in 1 2; do
      s0=$(cache_stats); w0=$(snap msrA msrB); nodelines=$(node_log_lines)
      PULL_TRY=1 pull "$hp/admin/geo-ecold-$tg:v1" "$NEAR_CREDS" && break
      # an error, not slowness: kept for the report with what the node logged, then once more
      wait_idle msrA msrB
      nodelog=$(node_warnings "$nodelines")
      FAILS+=("endpoint $case, $SHAPE, $CLIENT, attempt $attempt: \`$PULL_CMD\` -> $PULL_ERR${nodelog:+ (node: $nodelog)}")
      log "FAILED: endpoint $case pull: $PULL_ERR${nodelog:+ (node: $nodelog)}"
      [ "$attempt" = 1 ] || die "endpoint $case pull failed twice"
    done
    wait_idle msrA msrB; w1=$(snap msrA msrB)
    node_wait "$s0" 0 "$IMG_BLOBS"
    [ "${NODE_DL[0]}" -ge "$IMG_BLOBS" ] && [ "${NODE_DL[2]}" = 0 ] \
      || die "endpoint warm pull ($case): node hits/upstream fetches +${NODE_DL[0]}/+${NODE_DL[2]}, expected +$IMG_BLOBS/+0"
    log "MSR endpoint warm$([ "$case" = ewarm ] || echo ", relay off") $SHAPE $CLIENT $tg: $PULL_S s"
    add "$k,$case" "$PULL_S" "$w0" "$w1"
  done; done
}

# ===== Distribution =================================================================
dist_setup() {
  DC_PORT=$(free_port); start_dist dist-central "$DC_PORT"
  start_link distA "$DC_PORT"; DIST_A=$LINK_PORT      # user -> central
  start_link distB "$DC_PORT"; DIST_B=$LINK_PORT      # pull-through cache -> central
  DP_PORT=$(free_port); start_dist dist-cache "$DP_PORT" "http://127.0.0.1:$DIST_B"
  log "Distribution: central :$DC_PORT, pull-through cache :$DP_PORT (remoteurl via link B' :$DIST_B)"
}
dist_round() {  # dist_round TAG
  local tg=$1 k="$SHAPE,$CLIENT,dist" w0 w1 rep
  LINK_NAMES=(distA distB)
  make_image; IB[$SHAPE]=$IMG_BYTES; push "127.0.0.1:$DC_PORT" "admin/geo-direct-$tg"; rm -rf "$IMG"
  w0=$(snap distA distB)
  pull "127.0.0.1:$DIST_A/admin/geo-direct-$tg:v1"
  wait_idle distA distB; w1=$(snap distA distB)
  log "Distribution direct $SHAPE $CLIENT $tg: $PULL_S s"; add "$k,direct" "$PULL_S" "$w0" "$w1"
  make_image; push "127.0.0.1:$DC_PORT" "admin/geo-cold-$tg"; rm -rf "$IMG"
  w0=$(snap distA distB)
  pull "127.0.0.1:$DP_PORT/admin/geo-cold-$tg:v1"
  wait_idle distA distB; w1=$(snap distA distB)
  [ "${IDLE_TAIL%.*}" -lt 2 ] || EXTRA+=("Distribution cold $SHAPE $CLIENT $tg: link B' kept moving bytes ${IDLE_TAIL} s after the pull ended")
  log "Distribution cold $SHAPE $CLIENT $tg: $PULL_S s"; add "$k,cold" "$PULL_S" "$w0" "$w1"
  for rep in $(seq "$WARM_REPS"); do
    w0=$(snap distA distB)
    pull "127.0.0.1:$DP_PORT/admin/geo-cold-$tg:v1"
    wait_idle distA distB; w1=$(snap distA distB)
    log "Distribution warm $SHAPE $CLIENT $tg: $PULL_S s"; add "$k,warm" "$PULL_S" "$w0" "$w1"
  done
}

[ "$DO_DIST" = 0 ] || dist_setup
[ "$DO_PULLS" = 1 ] || ROUNDS=0
N_COMBO=0
for r in $(seq "$ROUNDS"); do
  si=0
  for SHAPE in $SHAPES; do
    si=$((si + 1)); LAYERS=${SHAPE%x*}; LAYER_MB=${SHAPE#*x}
    for CLIENT in $CLIENTS; do
      N_COMBO=$((N_COMBO + 1)); tag="r${r}s${si}${CLIENT:0:1}"
      log "== round $r, image $LAYERS x $LAYER_MB MiB, $CLIENT"
      # alternate which registry goes first
      if [ "$DO_DIST" = 1 ] && [ $((N_COMBO % 2)) = 0 ]; then dist_round "$tag"; msr_round "$tag"
      else msr_round "$tag"; [ "$DO_DIST" = 0 ] || dist_round "$tag"; fi
    done
  done
done
# ===== blob throughput of the cache node ============================================
batch() {  # batch URL C -> aggregate MiB/s of C clients x REPS GETs (fails on non-200 / short bodies)
  local url=$1 c=$2 out="$BENCH_TMP/batch.out" i pids=() t0 t1
  : >"$out"
  t0=$EPOCHREALTIME
  for i in $(seq "$c"); do
    ( for _ in $(seq "$REPS"); do
        curl -s -o /dev/null -w '%{http_code} %{size_download}\n' "$url" || echo "curl-failed 0"
      done >>"$out" ) &
    pids+=($!)
  done
  wait "${pids[@]}"
  t1=$EPOCHREALTIME
  awk -v t0="$t0" -v t1="$t1" -v want="$BLOBSIZE" -v n=$((c * REPS)) -v url="${url%%\?*}" '
    { if ($1 != 200 || $2 != want) bad++; b += $2; k++ }
    END { if (bad || k != n) { printf "bad responses (%d of %d not 200 with %d bytes) from %s\n", bad, k, want, url > "/dev/stderr"; exit 1 }
          printf "%.1f\n", b / (t1 - t0) / 1048576 }' "$out"
}
declare -A TP=()
if [ "$DO_TPUT" = 1 ]; then
  log "blob throughput: making a $BLOB_MB MiB layer"
  LAYERS=1; LAYER_MB=$BLOB_MB; make_image
  read -r DIGEST BLOBPATH BLOBSIZE < <("$PYTHON" -c 'import json,sys; l=json.load(open(sys.argv[1]))["layers"][0]; print(l["digest"], l["path"], l["size"])' "$IMG.json")
  push "$MSR_HOSTPORT" admin/geo-blob "$MSR_CREDS"
  api PATCH repositories/admin/geo-blob '{"visibility":"public"}' >/dev/null
  TOKEN=$(MSR_CREDS=$NEAR_CREDS; msr_token "repository:admin/geo-blob:pull")
  read -r CODE LOC < <(curl -s -o /dev/null -w '%{http_code} %{redirect_url}\n' \
    -H "Authorization: Bearer $TOKEN" "$MSR_URL/v2/admin/geo-blob/blobs/$DIGEST")
  [ "$CODE" = 307 ] && [[ $LOC == "$CACHE_URL/v2/admin/geo-blob/blobs/$DIGEST?grant="* ]] \
    || die "GET blob as 'near' (default cache asia): HTTP $CODE, Location '$LOC', expected 307 to $CACHE_URL"
  t0=$EPOCHREALTIME
  sum=$(curl -sf "$LOC" | sha256sum | cut -d' ' -f1) || die "first GET of the cache URL failed"
  MISS_S=$(elapsed "$t0" "$EPOCHREALTIME")
  [ "sha256:$sum" = "$DIGEST" ] || die "cache node: body does not match $DIGEST (got sha256:$sum)"
  hdr=$(curl -s -D - -o "$BENCH_TMP/blob.check" "$LOC" | tr -d '\r')
  grep -qi '^x-cache: HIT' <<<"$hdr" || die "second GET of the cache URL is not a hit: $hdr"
  [ "sha256:$(sha256sum <"$BENCH_TMP/blob.check" | cut -d' ' -f1)" = "$DIGEST" ] || die "cache hit: wrong body"
  rm -f "$BENCH_TMP/blob.check"
  log "cache node: first GET (miss, fetched over link B) $MISS_S s; hit checked"
  NP=$(free_port); start_nginx "$NP" "$(dirname "$BLOBPATH")"
  NGINX_URL="http://127.0.0.1:$NP/${DIGEST#sha256:}"
  [ "sha256:$(curl -sf "$NGINX_URL" | sha256sum | cut -d' ' -f1)" = "$DIGEST" ] || die "nginx: wrong body"
  declare -A TPV=()
  for c in $CONC; do
    for k in $(seq "$TPUT_ROUNDS"); do   # alternate the targets within each round
      for t in nginx cache; do
        if [ "$t" = nginx ]; then u=$NGINX_URL; else u=$LOC; fi
        v=$(batch "$u" "$c") || die "$t c=$c: failed"
        TPV[$t,$c]="${TPV[$t,$c]:-} $v"
      done
    done
    for t in nginx cache; do
      TP[$t,$c]=$(printf '%s\n' ${TPV[$t,$c]} | median)
      log "$t c=$c:${TPV[$t,$c]} MiB/s -> median ${TP[$t,$c]}"
    done
  done
fi


# ===== report =======================================================================
# per-round sums of two counters (A + B) of KEY, and the median / max of them
sum_ab() { local -n x=$1 y=$2; paste -d' ' <(printf '%s\n' ${x[$3]:-}) <(printf '%s\n' ${y[$3]:-}) | awk 'NF { print $1 + $2 }'; }
conns() { [ -n "${CA[$1]:-}" ] || { echo n/a; return; }; sum_ab CA CB "$1" | median; }
conns_max() { [ -n "${CA[$1]:-}" ] || { echo n/a; return; }; sum_ab CA CB "$1" | sort -n | tail -n 1; }
wancell() {  # wancell KEY -> "A+B conns, A+B reqs, bytes" (medians)
  [ -n "${W[$1]:-}" ] || { echo "n/a"; return; }
  echo "$(med CA "$1")+$(med CB "$1") / $(med RA "$1")+$(med RB "$1") / $(wan "$(med W "$1")")"
}
# columns of the pull table: "label|what", what = "t CASE" (seconds) or "r CASE CASE" (ratio)
# or "c" (WAN connections per warm pull, every mode); CASE = REG,CASE
COLS=("far (direct), MSR|t msr,direct")
[ "$DO_DIST" = 0 ] || COLS+=("far (direct), Distribution|t dist,direct")
COLS+=("MSR redirect cold|t msr,cold" "MSR redirect warm|t msr,warm")
[ "$DO_PREWARM" = 0 ] || COLS+=("MSR redirect pre-warmed|t msr,prewarmed")
[ "$DO_ENDPOINT" = 0 ] || COLS+=("MSR endpoint cold|t msr,ecold" "MSR endpoint warm|t msr,ewarm"
                                 "MSR endpoint warm, relay off|t msr,ewarm_norelay")
[ "$DO_DIST" = 0 ] || COLS+=("Distribution proxy cold|t dist,cold" "Distribution proxy warm|t dist,warm")
WARM_MODES=("redirect|msr,warm"); WARM_LABELS="redirect"
[ "$DO_ENDPOINT" = 0 ] || { WARM_MODES+=("endpoint|msr,ewarm" "relay off|msr,ewarm_norelay"); WARM_LABELS+=" / endpoint / endpoint, relay off"; }
[ "$DO_DIST" = 0 ] || { WARM_MODES+=("Distribution|dist,warm"); WARM_LABELS+=" / Distribution"; }
COLS+=("WAN connections per warm pull: $WARM_LABELS|c")
COLS+=("far ÷ warm, MSR redirect|r msr,direct msr,warm")
[ "$DO_ENDPOINT" = 0 ] || COLS+=("far ÷ warm, MSR endpoint|r msr,direct msr,ewarm")
[ "$DO_DIST" = 0 ] || COLS+=("far ÷ warm, Distribution|r dist,direct dist,warm")
[ "$DO_DIST" = 0 ] || [ "$DO_ENDPOINT" = 0 ] || COLS+=("endpoint warm ÷ Distribution warm|r msr,ewarm dist,warm")
cell() {  # cell WHAT (for the current SHAPE, CLIENT)
  local kp="$SHAPE,$CLIENT" m out=""
  set -- $1
  case $1 in
    t) fmt2 "$(med T "$kp,$2")";;
    r) ratio "$(med T "$kp,$2")" "$(med T "$kp,$3")";;
    c) for m in "${WARM_MODES[@]}"; do out+="${out:+ / }$(conns "$kp,${m#*|}")"; done; echo "$out";;
  esac
}

REPORT="$BENCH_TMP/report.md"
{
if [ "$DO_PULLS" = 1 ]; then
  echo "## geo: pulls over a simulated WAN (issue 5)"
  echo
  echo "Links (latency_proxy.py): ${DELAY_MS} ms one way ($(awk -v d="$DELAY_MS" 'BEGIN{print 2*d}') ms RTT), $BW/s per direction shared by the link's connections."
  echo "Images: LAYERS x MiB of random data per layer (gzip level $GZIP_LEVEL); a new image for every far, cold and pre-warmed pull."
  echo "Clients: skopeo = \`skopeo copy docker://... $DEST:<fresh dir>\`; podman = \`podman --storage-driver vfs --root <fresh> pull\`."
  echo "Seconds, median of $ROUNDS round(s)$([ "$WARM_REPS" = 1 ] || echo " ($WARM_REPS warm pulls per round and mode)"). far = direct from the central registry over link A (MSR: user far, no cache)."
  echo "MSR redirect: the user pulls from MSR over A, MSR answers the blob GETs 307 to the node (user near's default cache)."
  echo "MSR endpoint: the user (near) pulls from the node; the node resolves the tag at MSR over B and fills misses over B;"
  echo "token relay on (the node relays /auth/token over B), or off (the client asks MSR's token service over A)."
  echo "Distribution: pull-through cache (\`proxy: remoteurl\`) fetching over B', no auth. Every MSR pull fetches a token (password check)."
  echo
  printf '| image | client |'; for c in "${COLS[@]}"; do printf ' %s |' "${c%%|*}"; done; echo
  printf '|---|---|'; for c in "${COLS[@]}"; do printf -- '---:|'; done; echo
  for SHAPE in $SHAPES; do
    for CLIENT in $CLIENTS; do
      printf '| %s x %s MiB | %s |' "${SHAPE%x*}" "${SHAPE#*x}" "$CLIENT"
      for c in "${COLS[@]}"; do printf ' %s |' "$(cell "${c#*|}")"; done; echo
    done
  done
  echo
  echo "WAN cost per pull, median: new TCP connections over A+B / HTTP requests over A+B / bytes over A and B"
  echo "(both directions). Each new connection costs one round trip before its first request."
  echo
  CASES=("far (direct), MSR|msr,direct" "MSR redirect cold|msr,cold" "MSR redirect warm|msr,warm")
  [ "$DO_PREWARM" = 0 ] || CASES+=("MSR redirect pre-warmed|msr,prewarmed" "MSR pre-warm job|msr,prewarm_job")
  [ "$DO_ENDPOINT" = 0 ] || CASES+=("MSR endpoint cold|msr,ecold" "MSR endpoint warm|msr,ewarm" "MSR endpoint warm, relay off|msr,ewarm_norelay")
  [ "$DO_DIST" = 0 ] || CASES+=("far (direct), Distribution|dist,direct" "Distribution proxy cold|dist,cold" "Distribution proxy warm|dist,warm")
  printf '| image (MiB of blobs) | client |'; for c in "${CASES[@]}"; do printf ' %s |' "${c%%|*}"; done; echo
  printf '|---|---|'; for c in "${CASES[@]}"; do printf -- '---:|'; done; echo
  for SHAPE in $SHAPES; do
    for CLIENT in $CLIENTS; do
      printf '| %s x %s MiB (%s) | %s |' "${SHAPE%x*}" "${SHAPE#*x}" "$(mib "${IB[$SHAPE]:-}")" "$CLIENT"
      for c in "${CASES[@]}"; do printf ' %s |' "$(wancell "$SHAPE,$CLIENT,${c#*|}")"; done; echo
    done
  done
  echo
  echo "WAN requests of one warm pull (the last; query strings left out):"
  echo
  for SHAPE in $SHAPES; do
    for CLIENT in $CLIENTS; do
      for m in "${WARM_MODES[@]}"; do
        k="$SHAPE,$CLIENT,${m#*|}"
        case ${m%%|*} in endpoint|"relay off") ;; *) [ "$SHAPE" = "${SHAPES##* }" ] && [ "$CLIENT" = "${CLIENTS##* }" ] || continue;; esac
        echo "- ${SHAPE%x*} x ${SHAPE#*x} MiB, $CLIENT, ${m%%|*}: ${WREQ[$k]:-none}"
      done
    done
  done
  echo
  if [ "$DO_PREWARM" = 1 ]; then
    line=""
    for SHAPE in $SHAPES; do for CLIENT in $CLIENTS; do
      line+="${line:+, }${SHAPE%x*} x ${SHAPE#*x} MiB (before the $CLIENT pull) $(fmt2 "$(med T "$SHAPE,$CLIENT,msr,prewarm_job")") s"
    done; done
    echo "- MSR pre-warm: POST /api/v0/content_caches/<id>/prewarm -> the node had fetched every blob in: $line (median)."
  fi
  for n in "${EXTRA[@]}"; do echo "- $n"; done
  for n in "${FAILS[@]}"; do echo "- FAILED (the pull was made again; the table has the second attempt): $n"; done
  for m in warm ewarm dist; do
    [ "$m" != ewarm ] || [ "$DO_ENDPOINT" = 1 ] || continue
    [ "$m" != dist ] || [ "$DO_DIST" = 1 ] || continue
    line=""; all=met
    for SHAPE in $SHAPES; do for CLIENT in $CLIENTS; do
      if [ "$m" = dist ]; then d=$(med T "$SHAPE,$CLIENT,dist,direct"); w=$(med T "$SHAPE,$CLIENT,dist,warm")
      else d=$(med T "$SHAPE,$CLIENT,msr,direct"); w=$(med T "$SHAPE,$CLIENT,msr,$m"); fi
      fw=$(awk -v d="$d" -v w="$w" 'BEGIN{ printf "%.1f", d / w }')
      awk -v x="$fw" 'BEGIN{ exit !(x >= 10) }' || all="NOT met"
      line+="${line:+, }${SHAPE%x*} x ${SHAPE#*x} MiB $CLIENT ${fw}x"
    done; done
    case $m in warm) label="MSR redirect";; ewarm) label="MSR endpoint";; dist) label="Distribution (for comparison)";; esac
    echo "- Target \"warm pull at least 10x faster than far\", $label: $line -> $([ "$all" = met ] && echo "met for every shape" || echo "NOT met for all of them")."
  done
  if [ "$DO_ENDPOINT" = 1 ]; then
    for m in ewarm ewarm_norelay; do
      mx=0
      for SHAPE in $SHAPES; do for CLIENT in $CLIENTS; do
        v=$(conns_max "$SHAPE,$CLIENT,msr,$m"); [ "$v" = n/a ] || [ "$v" -le "$mx" ] || mx=$v
      done; done
      echo "- Target \"at most 3 WAN connections for a warm endpoint pull, any number of layers\"$([ $m = ewarm ] || echo ", relay off"): at most $mx new connection(s) over A+B in any warm endpoint pull -> $([ "$mx" -le 3 ] && echo met || echo "NOT met")."
    done
  fi
fi
  if [ "$DO_TPUT" = 1 ]; then
    echo
    echo "## geo: cache node blob throughput"
    echo
    echo "One $BLOB_MB MiB layer ($BLOBSIZE bytes). Cache node: \`msr cache\` (2 workers x 16 threads, defaults), a hit,"
    echo "URL = MSR's 307 Location for user near (grant in the query). nginx: the same file, static, sendfile on."
    echo "C concurrent curl clients x $REPS GETs; aggregate MiB/s; median of $TPUT_ROUNDS; (x) = ratio to nginx."
    echo "First GET through the node (miss, fetched over link B): $(fmt2 "$MISS_S") s. Machine: $(host_summary)."
    echo
    printf '| target |'; for c in $CONC; do printf ' c=%s MiB/s |' "$c"; done; echo
    printf '|---|'; for c in $CONC; do printf -- '---:|'; done; echo
    printf '| nginx %s (static, sendfile) |' "$("$NGINX_BIN" -v 2>&1 | sed 's|.*/||')"
    for c in $CONC; do printf ' %.0f |' "${TP[nginx,$c]}"; done; echo
    printf '| msr cache node (hit) |'
    for c in $CONC; do printf ' %.0f (%s) |' "${TP[cache,$c]}" "$(ratio "${TP[cache,$c]}" "${TP[nginx,$c]}")"; done; echo
    echo
    for c in $CONC; do
      x=$(awk -v a="${TP[cache,$c]}" -v b="${TP[nginx,$c]}" 'BEGIN{ printf "%.2f", a / b }')
      echo "- Target \"cache blob throughput at least 0.8x nginx\", c=$c: ${x}x -> $(awk -v x="$x" 'BEGIN{ print (x >= 0.8) ? "met" : "NOT met" }')."
    done
  fi
  echo
} >"$REPORT"

cat "$REPORT"
if [ "$SAVE" = 1 ]; then
  {
    echo "# MSR geo benchmark, $TS"
    echo
    echo "- machine: $(host_summary)"
    echo "- msr: $MSR_BIN; tools: skopeo $(skopeo --version 2>/dev/null | awk '{print $3}'), docker-registry $(registry_version)"
    echo "- command: $0 $ORIG_ARGS"
    echo
    cat "$REPORT"
  } >"$RES"
  log "results: $RES"
fi
