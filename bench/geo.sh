#!/usr/bin/env bash
# Far users and a regional cache (issue 5): pull times over a simulated WAN, MSR's cache
# node next to Distribution as a pull-through cache, and the cache node's blob throughput.
#
# Links are latency_proxy.py instances (one-way --delay-ms, --bw shared per direction):
#   MSR           user -> MSR through link A; cache node (`msr cache`) -> MSR through
#                 link B; user -> cache node direct. MSR answers the blob GETs of a user
#                 whose default cache is the node with a 307 to the node (grant in the URL).
#   Distribution  user -> central docker-registry through link A'; a second docker-registry
#                 with `proxy: remoteurl:` (pull-through cache) -> central through link B';
#                 user -> pull-through cache direct.
# Pulls (`skopeo copy docker://... dir:<fresh dir>`, timed): direct from the central
# registry over A ("far"), through the cache cold, warm (the same image again), and
# pre-warmed (MSR only: POST /api/v0/content_caches/<id>/prewarm, wait until the node
# has fetched every blob and link B is idle, then pull). Every direct, cold and
# pre-warmed case uses a new image (new random seed), pushed to the central registry
# locally, not through a link. WAN bytes: the links' own counters (both directions).
# Blob throughput: one --blob-mb layer, from the cache node (a hit; the URL is MSR's 307
# Location with its grant) and from nginx (the same bytes as a static file, sendfile on);
# C concurrent curl clients x --reps GETs; aggregate MiB/s; median of --tput-rounds.
#
# Usage: ./geo.sh [--layers 5] [--layer-mb 40] [--delay-ms 100] [--bw 6M] [--rounds 1]
#          [--blob-mb 200] [--conc "1 8"] [--reps 2] [--tput-rounds 3] [--gzip-level 0]
#          [--no-dist] [--no-tput] [--no-pulls] [--out DIR | --no-save] [common options, see below]
#   --delay-ms   one way (100 = 200 ms round trip);  --bw  per link and direction, shared
#                by the link's connections (6M = 6 MiB/s, about 50 Mbit/s)
#   --rounds     rounds of the WAN pulls (median; each round uses new images)
#   --no-dist / --no-pulls / --no-tput   skip Distribution / all WAN pulls / the throughput part
#   --out DIR    results go to DIR/<UTC time>-geo.md (+ .log); default bench/results
# Defaults: 5 x 40 MiB image, 200 ms RTT, 6 MiB/s; about 6-8 minutes on 2 cores.
# Smoke test (~1 min): ./geo.sh --layer-mb 4 --delay-ms 20 --bw 50M --blob-mb 16 --no-save
# Needs: bash, python3, curl, skopeo, docker-registry, nginx, msr (MSR, its Celery worker
# and a cache node are started here on a scratch data dir; --msr-url is not supported).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

ORIG_ARGS="$*"
LAYERS=5; LAYER_MB=40; DELAY_MS=100; BW=6M; ROUNDS=1; GZIP_LEVEL=0
BLOB_MB=200; CONC="1 8"; REPS=2; TPUT_ROUNDS=3
DO_DIST=1; DO_TPUT=1; DO_PULLS=1; OUT="$BENCH_DIR/results"; SAVE=1; DEST=oci
while [ $# -gt 0 ]; do
  case $1 in
    --layers) LAYERS=$2; shift 2;;
    --layer-mb) LAYER_MB=$2; shift 2;;
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
    --no-tput) DO_TPUT=0; shift;;
    --no-pulls) DO_PULLS=0; DO_DIST=0; shift;;
    --out) OUT=$2; shift 2;;
    --no-save) SAVE=0; shift;;
    -h|--help) usage; exit 0;;
    *) common_opt "$@" || die "unknown argument $1 (see --help)"; shift "$COMMON_SHIFT";;
  esac
done
for v in LAYERS ROUNDS REPS TPUT_ROUNDS GZIP_LEVEL; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v: ${!v} is not a whole number"
done
[ "$LAYERS" -ge 1 ] && [ "$ROUNDS" -ge 1 ] && [ "$REPS" -ge 1 ] && [ "$TPUT_ROUNDS" -ge 1 ] \
  || die "--layers, --rounds, --reps and --tput-rounds must be at least 1"
for v in LAYER_MB BLOB_MB DELAY_MS; do [[ ${!v} =~ ^[0-9]+([.][0-9]+)?$ ]] || die "bad value ${!v} for ${v}"; done
[ "$DEST" = oci ] || [ "$DEST" = dir ] || die "--dest: oci or dir"
[[ $BW =~ ^[0-9]+([.][0-9]+)?[KMG]?$ ]] || die "--bw: a rate like 6M (MiB/s), 512K"
for c in $CONC; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "--conc: whole numbers, e.g. \"1 8\""; done
[ -z "$MSR_URL_ARG" ] || die "geo.sh starts its own MSR, worker and cache node; --msr-url is not supported"
[ "$MSR_DB" = sqlite ] || die "geo.sh runs MSR on SQLite only"
[ -n "$MSR_BIN" ] && command -v "$MSR_BIN" >/dev/null 2>&1 || die "msr command not found (--msr-bin)"
need "$PYTHON" curl skopeo sha256sum timeout "$REGISTRY_BIN"
[ "$DO_TPUT" = 0 ] || need "$NGINX_BIN"

TS=$(date -u +%Y%m%dT%H%M%SZ)
if [ "$SAVE" = 1 ]; then
  mkdir -p "$OUT"
  RES="$OUT/$TS-geo.md"; LOGF="$OUT/$TS-geo.log"
  exec 2> >(tee -a "$LOGF" >&2)
fi

CACHE_PID=""; WORKER_PID=""
geo_cleanup() {
  local rc=$? f
  if [ "$rc" != 0 ] && [ -n "$BENCH_TMP" ]; then
    for f in msr.log worker.log cache.log; do
      [ -s "$BENCH_TMP/$f" ] || continue
      echo "--- last lines of $f:" >&2; tail -n 15 "$BENCH_TMP/$f" >&2
    done
  fi
  stop_gunicorn "$CACHE_PID"; CACHE_PID=""
  [ -z "$WORKER_PID" ] || stop_pid "$WORKER_PID" 30
  WORKER_PID=""
  bench_cleanup
}
bench_mktemp
trap geo_cleanup EXIT
trap 'exit 130' INT TERM

rnd() { "$PYTHON" -c 'import secrets; print(secrets.token_hex(12))'; }
fmt2() { awk -v v="$1" 'BEGIN{ if (v=="" || v=="n/a" || v=="nan") print "n/a"; else printf "%.2f\n", v }'; }
mib() { awk -v v="$1" 'BEGIN{ if (v=="" || v=="n/a") print "n/a"; else printf "%.1f\n", v / 1048576 }'; }
wan() { awk -v v="$1" 'BEGIN{ if (v=="" || v=="n/a") print "n/a"; else if (v < 1048576) printf "%.1f KiB\n", v / 1024; else printf "%.1f MiB\n", v / 1048576 }'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{ printf "%.3f\n", b - a }'; }

# -- links ---------------------------------------------------------------------------
# start_link NAME TARGET_PORT -> LINK_PORT; counters in $BENCH_TMP/link-NAME.json
start_link() {
  local name=$1 target=$2 port i
  port=$(free_port)
  "$PYTHON" "$BENCH_DIR/latency_proxy.py" --listen "127.0.0.1:$port" --target "127.0.0.1:$target" \
    --delay-ms "$DELAY_MS" --shared-bw "$BW" --stats-file "$BENCH_TMP/link-$name.json" \
    --stats-interval 0.2 >"$BENCH_TMP/link-$name.log" 2>&1 &
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
snap() {  # snap LINK_A LINK_B -> "bytes(A+B) connections(A) connections(B)" so far
  "$PYTHON" -c 'import json,sys
a, b = (json.load(open("%s/link-%s.json" % (sys.argv[1], n))) for n in sys.argv[2:4])
print(a["up"] + a["down"] + b["up"] + b["down"], a["total"], b["total"])' \
    "$BENCH_TMP" "$1" "$2" || die "cannot read the counters of links $*"
}
# wait_idle NAME...: until the links' counters stop moving for 1.5 s (max 30 min);
# sets IDLE_TAIL = seconds from the call to the last byte seen
wait_idle() {
  local t0=$EPOCHREALTIME last cur tlast=$EPOCHREALTIME stable=0 i
  sleep 0.3
  last=$(link_bytes "$@")
  for i in $(seq 3600); do
    sleep 0.5
    cur=$(link_bytes "$@")
    if [ "$cur" = "$last" ]; then stable=$((stable + 1)); [ "$stable" -ge 3 ] && break
    else stable=0; last=$cur; tlast=$EPOCHREALTIME; fi
  done
  [ "$stable" -ge 3 ] || die "links $* still busy after 30 min"
  IDLE_TAIL=$(awk -v a="$t0" -v b="$tlast" 'BEGIN{ d = b - a; printf "%.1f\n", d < 0.5 ? 0 : d }')
}

# -- images, pushes, pulls ------------------------------------------------------------
IMG_N=0
make_image() {  # make_image LAYERS LAYER_MB -> IMG (OCI layout), IMG_BLOBS, IMG_BYTES (config + layers)
  IMG_N=$((IMG_N + 1)); IMG="$BENCH_TMP/img$IMG_N"
  "$PYTHON" "$BENCH_DIR/mkimage.py" --layers "$1" --size-mb "$2" --compression gzip \
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
pull() {  # pull REF [CREDS] -> PULL_S: timed skopeo copy to a fresh oci: layout or dir: (blobs checked)
  local ref=$1 args=() dir t0 t1 n want dst
  [ -z "${2:-}" ] || args=(--src-creds "$2")
  PULL_N=$((PULL_N + 1)); dir="$BENCH_TMP/pull$PULL_N"
  if [ "$DEST" = oci ]; then dst="oci:$dir:v1"; want=$((LAYERS + 2)); else dst="dir:$dir"; want=$((LAYERS + 1)); fi
  sync   # no pull pays for the write-back of the previous one
  t0=$EPOCHREALTIME
  timeout 1800 skopeo copy --quiet --src-tls-verify=false "${args[@]}" "docker://$ref" "$dst" \
    >"$dir.out" 2>&1 || { cat "$dir.out" >&2; die "pull of $ref failed"; }
  t1=$EPOCHREALTIME
  # dir: holds config + layers named by digest; an oci: layout holds them and the manifest
  # under blobs/sha256
  n=$(find "$dir" -type f -regextype posix-extended -regex '.*/[0-9a-f]{64}' | wc -l)
  [ "$n" = "$want" ] || die "pull of $ref: $n blobs in $dir, expected $want"
  rm -rf "$dir" "$dir.out"
  PULL_S=$(elapsed "$t0" "$t1")
}

# -- MSR, its worker, the cache node --------------------------------------------------
api() {  # api METHOD PATH [JSON] -> body of /api/v0/PATH as admin (fails on HTTP >= 400)
  local data=() out code
  [ $# -lt 3 ] || data=(--data "$3")
  out=$(curl -sS -u "$MSR_CREDS" -X "$1" -H 'Content-Type: application/json' "${data[@]}" \
        -w '\n%{http_code}' "$MSR_URL/api/v0/$2") || die "API $1 /api/v0/$2: curl failed"
  code=${out##*$'\n'}; out=${out%$'\n'*}
  [ "$code" -lt 400 ] || die "API $1 /api/v0/$2 ${3:-} -> HTTP $code: $out"
  printf '%s\n' "$out"
}
msr_env() {  # MSR_ENV: env arguments for msr commands (scratch data dir, nothing inherited)
  msr_env_unset; MSR_ENV=("${MSR_ENV_UNSET[@]}")
}
start_msr_geo() {
  local port pw opts=()
  port=$(free_port); pw="bench-$(rnd)"
  msr_env
  # the cache nodes run on loopback, which the egress policy opens only when told to
  MSR_ENV+=("MSR_DATA_DIR=$BENCH_TMP/msr-data" "MSR_ADMIN_PASSWORD=$pw" "MSR_CACHE_GRANT_TTL=3600"
           "MSR_OUTBOUND_ALLOW=127.0.0.1/32")
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
  log "MSR up at $MSR_URL (pid $MSR_PID), worker pid $WORKER_PID"
}
start_cache_node() {  # start_cache_node UPSTREAM_URL -> CACHE_URL, CACHE_PID
  local port
  port=$(free_port)
  msr_env
  (cd "$BENCH_TMP" && exec env "${MSR_ENV[@]}" "$MSR_BIN" cache --name asia --msr "$1" --upstream "$1" \
     --data "$BENCH_TMP/cache-data" --bind "127.0.0.1:$port") >"$BENCH_TMP/cache.log" 2>&1 &
  CACHE_PID=$!
  CACHE_URL="http://127.0.0.1:$port"
  wait_http "$CACHE_URL/healthz" 60 "$CACHE_PID" "$BENCH_TMP/cache.log"
  log "cache node up at $CACHE_URL (pid $CACHE_PID), upstream $1"
}
cache_stats() {  # -> "hits misses upstream_fetches bytes_from_upstream" of the cache node
  curl -sf --max-time 10 "$CACHE_URL/stats" | "$PYTHON" -c 'import json,sys
d = json.load(sys.stdin); print(d["hits"], d["misses"], d["upstream_fetches"], d["bytes_from_upstream"])' \
    || die "GET $CACHE_URL/stats failed"
}
stats_delta() {  # stats_delta "BEFORE" "AFTER" -> "dhits dmisses dfetches dbytes"
  local -a a=($1) b=($2)
  echo "$((b[0] - a[0])) $((b[1] - a[1])) $((b[2] - a[2])) $((b[3] - a[3]))"
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
# T/W/CA/CB[reg,case]: space-separated per round: seconds, WAN bytes (A + B), new
# connections over A, over B
declare -A T=() W=() CA=() CB=()
add() {  # add REG CASE SECONDS "SNAP_BEFORE" "SNAP_AFTER"
  local -a a=($4) b=($5)
  T[$1,$2]="${T[$1,$2]:-} $3"; W[$1,$2]="${W[$1,$2]:-} $((b[0] - a[0]))"
  CA[$1,$2]="${CA[$1,$2]:-} $((b[1] - a[1]))"; CB[$1,$2]="${CB[$1,$2]:-} $((b[2] - a[2]))"
}
med() { local -n arr=$1; [ -n "${arr[$2]:-}" ] || { echo n/a; return; }; printf '%s\n' ${arr[$2]} | median; }
EXTRA=()   # notes for the report

IMAGE_MB=$(awk -v l="$LAYERS" -v m="$LAYER_MB" 'BEGIN{ printf "%g", l * m }')
log "scratch dir $BENCH_TMP; image $LAYERS x $LAYER_MB MiB, links ${DELAY_MS} ms one way, $BW/s shared"

# ===== MSR ==========================================================================
start_msr_geo
start_link msrA "${MSR_HOSTPORT##*:}"; MSR_A=$LINK_PORT    # user -> MSR
start_link msrB "${MSR_HOSTPORT##*:}"; MSR_B=$LINK_PORT    # cache node -> MSR
start_cache_node "http://127.0.0.1:$MSR_B"
CACHE_ID=$(api POST content_caches "{\"name\":\"asia\",\"url\":\"$CACHE_URL\"}" \
  | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
NEAR_CREDS="near:near-$(rnd)"; FAR_CREDS="far:far-$(rnd)"
api POST accounts "{\"name\":\"near\",\"password\":\"${NEAR_CREDS#*:}\"}" >/dev/null
api POST accounts "{\"name\":\"far\",\"password\":\"${FAR_CREDS#*:}\"}" >/dev/null
api PATCH accounts/near/settings '{"defaultContentCache":"asia"}' >/dev/null
log "cache 'asia' registered (id $CACHE_ID); user near -> cache, user far -> no cache"

msr_round() {
  local r=$1 s0 s1 w0 w1 d t0 t1 i
  local -a dl
  # direct, far user (no cache): everything over link A
  make_image "$LAYERS" "$LAYER_MB"; IMAGE_BYTES=$IMG_BYTES; push_msr "geo-direct$r"
  s0=$(cache_stats); w0=$(snap msrA msrB)
  pull "127.0.0.1:$MSR_A/admin/geo-direct$r:v1" "$FAR_CREDS"
  wait_idle msrA msrB; w1=$(snap msrA msrB); s1=$(cache_stats)
  [ "$s0" = "$s1" ] || die "direct pull by 'far' touched the cache node (stats $s0 -> $s1)"
  add msr direct "$PULL_S" "$w0" "$w1"; log "MSR direct (far) round $r: $PULL_S s"
  # cold, near user: manifest over A, blobs from the cache node, which fetches over B
  make_image "$LAYERS" "$LAYER_MB"; push_msr "geo-cold$r"
  s0=$(cache_stats); w0=$(snap msrA msrB)
  pull "127.0.0.1:$MSR_A/admin/geo-cold$r:v1" "$NEAR_CREDS"
  wait_idle msrA msrB; w1=$(snap msrA msrB)
  for i in $(seq 50); do   # counters of the node's other worker process land when its response ends
    dl=($(stats_delta "$s0" "$(cache_stats)")); [ "${dl[2]}" -ge "$IMG_BLOBS" ] && break; sleep 0.2
  done
  [ "${dl[2]}" = "$IMG_BLOBS" ] && [ "${dl[1]}" = "$IMG_BLOBS" ] \
    || die "cold pull through the cache: node misses/upstream fetches +${dl[1]}/+${dl[2]}, expected +$IMG_BLOBS each"
  [ "${IDLE_TAIL%.*}" -lt 2 ] || EXTRA+=("MSR cold round $r: links busy ${IDLE_TAIL} s after the pull ended")
  add msr cold "$PULL_S" "$w0" "$w1"; log "MSR cold round $r: $PULL_S s"
  # warm: the same image again
  s0=$(cache_stats); w0=$(snap msrA msrB)
  pull "127.0.0.1:$MSR_A/admin/geo-cold$r:v1" "$NEAR_CREDS"
  wait_idle msrA msrB; w1=$(snap msrA msrB)
  for i in $(seq 50); do
    dl=($(stats_delta "$s0" "$(cache_stats)")); [ "${dl[0]}" -ge "$IMG_BLOBS" ] && break; sleep 0.2
  done
  [ "${dl[0]}" -ge "$IMG_BLOBS" ] && [ "${dl[2]}" = 0 ] \
    || die "warm pull: node hits/upstream fetches +${dl[0]}/+${dl[2]}, expected +$IMG_BLOBS/+0"
  add msr warm "$PULL_S" "$w0" "$w1"; log "MSR warm round $r: $PULL_S s"
  # pre-warmed: a new image, POST prewarm, wait until the node fetched every blob
  make_image "$LAYERS" "$LAYER_MB"; push_msr "geo-prewarm$r"
  s0=$(cache_stats); w0=$(snap msrA msrB)
  t0=$EPOCHREALTIME
  api POST "content_caches/$CACHE_ID/prewarm" "{\"repository\":\"admin/geo-prewarm$r\",\"tag\":\"v1\"}" >/dev/null
  for i in $(seq 7200); do   # 30 min at most
    dl=($(stats_delta "$s0" "$(cache_stats)"))
    [ "${dl[2]}" -ge "$IMG_BLOBS" ] && [ "${dl[3]}" -ge "$IMG_BYTES" ] && break
    kill -0 "$WORKER_PID" 2>/dev/null || die "msr worker exited"
    sleep 0.25
  done
  t1=$EPOCHREALTIME
  [ "${dl[2]}" -ge "$IMG_BLOBS" ] && [ "${dl[3]}" -ge "$IMG_BYTES" ] \
    || die "pre-warm of admin/geo-prewarm$r did not complete: upstream fetches +${dl[2]}, bytes +${dl[3]} of $IMG_BYTES"
  wait_idle msrB; w1=$(snap msrA msrB)
  add msr prewarm_job "$(elapsed "$t0" "$t1")" "$w0" "$w1"
  log "MSR pre-warm round $r: the node had all $IMG_BLOBS blobs $(elapsed "$t0" "$t1") s after the POST"
  s0=$(cache_stats); w0=$(snap msrA msrB)
  pull "127.0.0.1:$MSR_A/admin/geo-prewarm$r:v1" "$NEAR_CREDS"
  wait_idle msrA msrB; w1=$(snap msrA msrB)
  for i in $(seq 50); do
    dl=($(stats_delta "$s0" "$(cache_stats)")); [ "${dl[0]}" -ge "$IMG_BLOBS" ] && break; sleep 0.2
  done
  [ "${dl[0]}" -ge "$IMG_BLOBS" ] && [ "${dl[2]}" = 0 ] \
    || die "pre-warmed pull: node hits/upstream fetches +${dl[0]}/+${dl[2]}, expected +$IMG_BLOBS/+0"
  add msr prewarmed "$PULL_S" "$w0" "$w1"; log "MSR pre-warmed round $r: $PULL_S s"
}

# ===== Distribution =================================================================
dist_setup() {
  DC_PORT=$(free_port); start_dist dist-central "$DC_PORT"
  start_link distA "$DC_PORT"; DIST_A=$LINK_PORT      # user -> central
  start_link distB "$DC_PORT"; DIST_B=$LINK_PORT      # pull-through cache -> central
  DP_PORT=$(free_port); start_dist dist-cache "$DP_PORT" "http://127.0.0.1:$DIST_B"
  log "Distribution: central :$DC_PORT, pull-through cache :$DP_PORT (remoteurl via link B' :$DIST_B)"
}
dist_round() {
  local r=$1 w0 w1
  make_image "$LAYERS" "$LAYER_MB"; push "127.0.0.1:$DC_PORT" "admin/geo-direct$r"; rm -rf "$IMG"
  w0=$(snap distA distB)
  pull "127.0.0.1:$DIST_A/admin/geo-direct$r:v1"
  wait_idle distA distB; w1=$(snap distA distB)
  add dist direct "$PULL_S" "$w0" "$w1"; log "Distribution direct round $r: $PULL_S s"
  make_image "$LAYERS" "$LAYER_MB"; push "127.0.0.1:$DC_PORT" "admin/geo-cold$r"; rm -rf "$IMG"
  w0=$(snap distA distB)
  pull "127.0.0.1:$DP_PORT/admin/geo-cold$r:v1"
  wait_idle distA distB; w1=$(snap distA distB)
  add dist cold "$PULL_S" "$w0" "$w1"; log "Distribution cold round $r: $PULL_S s"
  [ "${IDLE_TAIL%.*}" -lt 2 ] || EXTRA+=("Distribution cold round $r: link B' kept moving bytes ${IDLE_TAIL} s after the pull ended")
  w0=$(snap distA distB)
  pull "127.0.0.1:$DP_PORT/admin/geo-cold$r:v1"
  wait_idle distA distB; w1=$(snap distA distB)
  add dist warm "$PULL_S" "$w0" "$w1"; log "Distribution warm round $r: $PULL_S s"
}

[ "$DO_DIST" = 0 ] || dist_setup
[ "$DO_PULLS" = 1 ] || ROUNDS=0
for r in $(seq "$ROUNDS"); do   # alternate which registry goes first
  if [ "$DO_DIST" = 1 ] && [ $((r % 2)) = 0 ]; then dist_round "$r"; msr_round "$r"
  else msr_round "$r"; [ "$DO_DIST" = 0 ] || dist_round "$r"; fi
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
  make_image 1 "$BLOB_MB"
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
REPORT="$BENCH_TMP/report.md"
{
if [ "$DO_PULLS" = 1 ]; then
  echo "## geo: pulls over a simulated WAN (issue 5)"
  echo
  echo "Image: $LAYERS x $LAYER_MB MiB layers, $(mib "$IMAGE_BYTES") MiB of blobs (gzip level $GZIP_LEVEL, random data)."
  echo "Links (latency_proxy.py): ${DELAY_MS} ms one way ($(awk -v d="$DELAY_MS" 'BEGIN{print 2*d}') ms RTT), $BW/s per direction shared by the link's connections."
  echo "user -> central over A, cache -> central over B, user -> cache on loopback. \`skopeo copy docker://... dir:\`,"
  echo "seconds, median of $ROUNDS round(s); a new image for every direct, cold and pre-warmed pull."
  echo "MSR pulls include a bearer token fetched over A (password check); Distribution runs without auth."
  echo
  echo "| registry | direct (far) | via cache, cold | via cache, warm | via cache, pre-warmed | far / warm | far / pre-warmed | far / cold |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for reg in msr dist; do
    [ "$reg" = dist ] && [ "$DO_DIST" = 0 ] && continue
    d=$(med T "$reg,direct"); c=$(med T "$reg,cold"); w=$(med T "$reg,warm"); p=$(med T "$reg,prewarmed")
    if [ "$reg" = msr ]; then label="MSR + \`msr cache\` node"; pcell=$(fmt2 "$p")
    else label="Distribution $(registry_version) + pull-through cache (\`proxy: remoteurl\`)"; pcell="n/a (no pre-warm)"; fi
    echo "| $label | $(fmt2 "$d") | $(fmt2 "$c") | $(fmt2 "$w") | $pcell | $(ratio "$d" "$w") | $(ratio "$d" "$p") | $(ratio "$d" "$c") |"
  done
  if [ "$DO_DIST" = 1 ]; then
    echo "| MSR time / Distribution time | $(ratio "$(med T msr,direct)" "$(med T dist,direct)") | $(ratio "$(med T msr,cold)" "$(med T dist,cold)") | $(ratio "$(med T msr,warm)" "$(med T dist,warm)") | | | | |"
  fi
  echo
  echo "WAN traffic per pull, median: bytes over links A + B (both directions; image $(mib "$IMAGE_BYTES") MiB)"
  echo "and new TCP connections over A / over B (each costs one round trip before its first request):"
  echo
  echo "| registry | direct (far) | cold | warm | pre-warmed pull | pre-warm job |"
  echo "|---|---:|---:|---:|---:|---:|"
  for reg in msr dist; do
    [ "$reg" = dist ] && [ "$DO_DIST" = 0 ] && continue
    row="| $([ $reg = msr ] && echo MSR || echo Distribution) |"
    for k in direct cold warm prewarmed prewarm_job; do
      if [ -n "${W[$reg,$k]:-}" ]; then
        row+=" $(wan "$(med W "$reg,$k")"), $(med CA "$reg,$k") / $(med CB "$reg,$k") conns |"
      else row+=" n/a |"; fi
    done
    echo "$row"
  done
  pj=$(med T msr,prewarm_job)
  echo
  echo "- MSR pre-warm: POST /api/v0/content_caches/<id>/prewarm -> the node had fetched all $((LAYERS + 1)) blobs in $(fmt2 "$pj") s (median)."
  for n in "${EXTRA[@]}"; do echo "- $n"; done
  fw=$(awk -v d="$(med T msr,direct)" -v w="$(med T msr,warm)" 'BEGIN{ printf "%.1f", d / w }')
  echo "- Target \"warm pull at least 10x faster than direct\": MSR far/warm = ${fw}x -> $(awk -v x="$fw" 'BEGIN{ print (x >= 10) ? "met" : "NOT met" }')."
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
