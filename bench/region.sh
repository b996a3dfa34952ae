#!/usr/bin/env bash
# A region of cache nodes on one shared S3 store (issue 18), side by side with one node on
# its local disk and one node on the store, in one run. Setups (--setups, all by default):
#   local    one `msr cache` node, blobs on its local disk (--data): today's mode
#   s3       one node, `--store s3://<bucket>/s3`, hits streamed through the node
#   s3r      one node, `--store s3://<bucket>/s3r --s3-redirect`: hits answered 307 to a
#            presigned GET on the bucket, which the client follows
#   region   two nodes, same --name, `--store s3://<bucket>/region`, each its own --data and
#            --node-url, behind nginx (round robin, proxy_buffering off, HTTP/1.1 to the
#            nodes); hits streamed
#   regionr  the same with --s3-redirect (its own prefix)
# Each setup has its own store (data dir or prefix), so every setup starts cold. The bucket
# is moto's S3 emulator (from <checkout>/.venv), one for all setups, with atomic
# conditional writes (see --plain-moto). All nodes share one --name, registered in MSR;
# their --upstream is a counting proxy in front of MSR (latency_proxy.py, no delay, no
# cap): it counts the bytes and the blob GETs the nodes fetch from MSR.
#
# One image with 2 + --cold layers of --layer-mb MiB (random data) is pushed to a fresh
# MSR (`msr serve`); a user whose default cache is the nodes' name gets one grant per layer
# from MSR (the 307 Location of a blob GET, grant in the query), and the blob URLs of every
# setup carry it (a grant names the cache, not a node). Per setup, in order:
#   cold     the first GET of the warm layer and of each --cold layer, one at a time, each
#            after the previous fill reached the store: time to the first body byte (TTFB)
#            and to the last (a miss, filled from MSR through the proxy)
#   herd     --herd clients connected beforehand GET one new layer at once (through nginx
#            for a region: half on each node); every body checked (size, sha256). Upstream
#            bytes = what came out of the counting proxy (vs the layer's size), the proxy's
#            GETs of that layer, and the sum over the nodes of their own /stats counters
#            ("self" in a region; asked of each node directly)
#   check    one GET of the warm layer: a hit (X-Cache: HIT, or a 307 to the bucket), body
#            checked against the digest
# Then hit throughput, --runs rounds, the setups' order rotating each round: --clients
# concurrent curl clients x --reps GETs of the warm layer (redirects followed; status,
# size and the number of redirects checked); aggregate MiB/s = bytes / wall time of the
# batch; min / median / max over the rounds, after one uncounted batch per setup; CPU
# seconds of the nodes, moto, nginx and the clients during the counted batches. With an
# S3 setup, "moto alone" joins the rotation: the same object fetched from moto directly
# (presigned GET, no node), the ceiling of the S3 setups on this machine.
# Last, hit TTFB: --ttfb-reps GETs of the warm layer per setup, one after another, each on
# a new connection (and a second one for the 307's presigned URL), every node warm by then.
#
# Usage: ./region.sh [--layer-mb 64] [--clients 8] [--reps 1] [--runs 7] [--herd 32]
#          [--cold 4] [--ttfb-reps 5] [--setups "local s3 s3r region regionr"]
#          [--plain-moto] [--out DIR | --no-save] [common options, see below]
#   --out DIR   results go to DIR/<UTC time>-region.md (+ .log); default bench/results
#   --plain-moto  moto_server as it is, instead of moto's app behind the checkout's
#               tests/fixtures/moto_atomic.py (atomic conditional writes, as on a real store;
#               moto_server's are not, and two nodes may both win a fill's lease there)
# Defaults: about 2.5-3 minutes on 2 cores. Smoke test (~1 min):
#   ./region.sh --layer-mb 8 --runs 2 --herd 8 --cold 1 --ttfb-reps 2 --no-save
# Env: NGINX_WORKERS (worker_processes, default auto), NGINX_PROXY_BUFFER_SIZE (nginx's
# proxy_buffer_size, default nginx's own: with proxy_buffering off, the most it reads from a
# node at a time).
# Needs: bash, python3, curl, skopeo, nginx, msr and moto_server (pip install -e '.[test]'
# into <checkout>/.venv; MOTO_BIN=PATH for another), a `msr cache` with --store (issue 18)
# for the S3 setups. --msr-url is not supported (MSR, its cache registration and the
# nodes are started here).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

ORIG_ARGS="$*"
LAYER_MB=64; CLIENTS=8; REPS=1; RUNS=7; HERD=32; COLD=4; TTFB_REPS=5
SETUPS="local s3 s3r region regionr"
OUT="$BENCH_DIR/results"; SAVE=1; PLAIN_MOTO=0
while [ $# -gt 0 ]; do
  case $1 in
    --layer-mb) LAYER_MB=$2; shift 2;;
    --clients) CLIENTS=$2; shift 2;;
    --reps) REPS=$2; shift 2;;
    --runs) RUNS=$2; shift 2;;
    --herd) HERD=$2; shift 2;;
    --cold) COLD=$2; shift 2;;
    --ttfb-reps) TTFB_REPS=$2; shift 2;;
    --setups) SETUPS=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --no-save) SAVE=0; shift;;
    --plain-moto) PLAIN_MOTO=1; shift;;
    -h|--help) usage; exit 0;;
    *) common_opt "$@" || die "unknown argument $1 (see --help)"; shift "$COMMON_SHIFT";;
  esac
done
for v in CLIENTS REPS RUNS HERD COLD TTFB_REPS; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || die "$v: ${!v} is not a whole number >= 1"
done
[[ $LAYER_MB =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--layer-mb: a number of MiB"
for s in $SETUPS; do case $s in local|s3|s3r|region|regionr) ;; *) die "--setups: local s3 s3r region regionr (got $s)";; esac; done
[ -n "$SETUPS" ] || die "--setups: at least one"
[ -z "$MSR_URL_ARG" ] || die "region.sh starts its own MSR and registers its cache there; --msr-url is not supported"
[ "$MSR_DB" = sqlite ] || log "region.sh runs MSR on SQLite (--db $MSR_DB ignored: MSR's database is not on the measured path)"
[ -n "$MSR_BIN" ] && command -v "$MSR_BIN" >/dev/null 2>&1 || die "msr command not found (--msr-bin)"
need "$PYTHON" curl skopeo
NEED_S3=0; NEED_NGINX=0
for s in $SETUPS; do
  case $s in s3|s3r) NEED_S3=1;; region|regionr) NEED_S3=1; NEED_NGINX=1;; esac
done
[ "$NEED_NGINX" = 0 ] || need "$NGINX_BIN"
if [ "$NEED_S3" = 1 ]; then
  "$MSR_BIN" cache --help 2>/dev/null | grep -q -- '--store' \
    || die "$MSR_BIN cache has no --store (a shared store, issue 18): run with --setups local"
fi

TS=$(date -u +%Y%m%dT%H%M%SZ)
if [ "$SAVE" = 1 ]; then
  mkdir -p "$OUT"
  RES="$OUT/$TS-region.md"; LOGF="$OUT/$TS-region.log"
  exec 2> >(tee -a "$LOGF" >&2)
fi

NODE_PIDS=()
region_cleanup() {
  local rc=$? f pid
  if [ "$rc" != 0 ] && [ -n "$BENCH_TMP" ]; then
    for f in "$BENCH_TMP"/node-*.log "$BENCH_TMP/msr.log" "$BENCH_TMP"/nginx/logs/*.log; do
      [ -s "$f" ] || continue
      echo "--- last lines of $(basename "$f"):" >&2; tail -n 12 "$f" >&2
    done
  fi
  for pid in "${NODE_PIDS[@]}"; do stop_gunicorn "$pid"; done
  NODE_PIDS=()
  bench_cleanup
}
bench_mktemp
trap region_cleanup EXIT
trap 'exit 130' INT TERM

jget() { "$PYTHON" -c 'import json,sys; d=json.load(sys.stdin)
for k in sys.argv[1:]: d=d[int(k)] if isinstance(d, list) else d[k]
print(d)' "$@"; }
ms() { awk -v v="$1" 'BEGIN{ if (v=="" || v=="n/a" || v=="nan") print "n/a"; else printf "%.0f\n", v * 1000 }'; }
fmt() { awk -v v="$1" -v d="${2:-2}" 'BEGIN{ if (v=="" || v=="n/a" || v=="nan") print "n/a"; else printf "%.*f\n", d, v }'; }
minmax() { sort -g | awk 'NR==1{mn=$1} {mx=$1} END{ printf "%s %s\n", mn, mx }'; }

# -- MSR ---------------------------------------------------------------------------------

# -- the counting proxy in front of MSR (the nodes' --upstream) ----------------------------
start_counter() {
  local port i
  port=$(free_port)
  "$PYTHON" "$BENCH_DIR/latency_proxy.py" --listen "127.0.0.1:$port" --target "$MSR_HOSTPORT" \
    --delay-ms 0 --no-handshake-delay --chunk 1048576 --stats-file "$BENCH_TMP/upstream.json" \
    --stats-interval 0.1 --request-log "$BENCH_TMP/upstream.req" >"$BENCH_TMP/upstream.log" 2>&1 &
  local pid=$!
  BENCH_PIDS+=("$pid")
  for i in $(seq 100); do
    [ -s "$BENCH_TMP/upstream.json" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$BENCH_TMP/upstream.log" >&2; die "counting proxy exited"; }
    sleep 0.1
  done
  [ -s "$BENCH_TMP/upstream.json" ] || die "counting proxy did not start"
  UPSTREAM_URL="http://127.0.0.1:$port"
}
upstream_down() { jget down <"$BENCH_TMP/upstream.json"; }   # bytes MSR -> nodes so far
upstream_gets() {  # upstream_gets HEX -> GETs of that blob seen by the proxy so far
  { grep -c " GET /v2/.*/blobs/sha256:$1\$" "$BENCH_TMP/upstream.req" 2>/dev/null || true; } | head -n 1
}
upstream_settle() {  # until the proxy has carried nothing new for 1 s (max 60 s)
  local last cur stable=0 i
  last=$(upstream_down)
  for i in $(seq 300); do
    sleep 0.2; cur=$(upstream_down)
    if [ "$cur" = "$last" ]; then stable=$((stable + 1)); [ "$stable" -ge 5 ] && return 0
    else stable=0; last=$cur; fi
  done
  log "upstream still busy after 60 s"
}

# -- the bucket: moto ---------------------------------------------------------------------
# start_store -> MOTO_URL, MOTO_PID, MOTO_PY. By default moto's S3 app behind the checkout's
# tests/fixtures/moto_atomic.py, which serializes writes: the nodes take a fill's lease with
# a conditional PUT (If-None-Match: *), atomic on S3, MinIO or Ceph, while moto_server checks
# the condition and then writes without a lock, so two nodes racing for a lease can both
# win there and both fetch upstream, for the emulator's reasons. --plain-moto: moto_server.
start_store() {
  if [ "$PLAIN_MOTO" = 1 ]; then
    start_moto "$BENCH_TMP/moto"
  else
    [ -n "$MOTO_BIN" ] || MOTO_BIN="$REPO_ROOT/.venv/bin/moto_server"
    [ -x "$MOTO_BIN" ] || die "moto_server not found: pip install -e '$REPO_ROOT[test]' into $REPO_ROOT/.venv (or MOTO_BIN=PATH)"
    [ -f "$REPO_ROOT/tests/fixtures/moto_atomic.py" ] || die "no $REPO_ROOT/tests/fixtures/moto_atomic.py (--plain-moto runs moto_server as it is)"
    local dir="$BENCH_TMP/moto" port py
    py=$(head -n 1 "$MOTO_BIN" | sed -n 's/^#! *//p' | awk '{print $1}')
    mkdir -p "$dir/tmp"; port=$(free_port)
    (cd "$dir" && exec env TMPDIR="$dir/tmp" PYTHONPATH="$REPO_ROOT" "$py" -m tests.fixtures.moto_atomic -H 127.0.0.1 -p "$port") \
      >"$dir/moto.log" 2>&1 &
    MOTO_PID=$!; MOTO_URL="http://127.0.0.1:$port"
    BENCH_PIDS+=("$MOTO_PID")
    wait_http "$MOTO_URL/" 60 "$MOTO_PID" "$dir/moto.log"
  fi
  MOTO_PY=$(head -n 1 "$MOTO_BIN" | sed -n 's/^#! *//p' | awk '{print $1}')
  "$MOTO_PY" -c 'import boto3' 2>/dev/null || die "no boto3 next to $MOTO_BIN ($MOTO_PY)"
}

# -- cache nodes ---------------------------------------------------------------------------
BUCKET=msr-region
CACHE_NAME=bench-region
declare -A BASE=() NODES=() NPIDS=() PREFIX=() LABEL=() DATA=()
# start_node SETUP INDEX PORT [msr cache options...] -> appends the node's URL to NODES[SETUP]
start_node() {
  local setup=$1 idx=$2 port=$3 url data; shift 3
  url="http://127.0.0.1:$port"; data="$BENCH_TMP/node-$setup-$idx"
  msr_env_unset
  # the bucket's credentials (moto checks none)
  local envs=("${MSR_ENV_UNSET[@]}")
  [ -z "${MOTO_URL:-}" ] || envs+=(MSR_CACHE_S3_ACCESS_KEY_ID=bench MSR_CACHE_S3_SECRET_ACCESS_KEY=bench-secret)
  (cd "$BENCH_TMP" && exec env "${envs[@]}" "$MSR_BIN" cache --name "$CACHE_NAME" --msr "$MSR_URL" \
     --upstream "$UPSTREAM_URL" --data "$data" --bind "127.0.0.1:$port" "$@") >"$BENCH_TMP/node-$setup-$idx.log" 2>&1 &
  local pid=$!
  NODE_PIDS+=("$pid")
  wait_http "$url/healthz" 60 "$pid" "$BENCH_TMP/node-$setup-$idx.log"
  NODES[$setup]="${NODES[$setup]:-} $url"; DATA[$setup]=$data; NPIDS[$setup]="${NPIDS[$setup]:-} $pid"
  log "$setup: node $idx up at $url (pid $pid)${*:+: $*}"
}
s3_opts() {  # s3_opts PREFIX -> S3OPTS
  S3OPTS=(--store "s3://$BUCKET/$1" --s3-endpoint "$MOTO_URL" --s3-region us-east-1 --s3-addressing-style path)
}
start_setup() {
  local s=$1 i port
  case $s in
    local) LABEL[$s]="1 node, local disk"
      start_node "$s" 1 "$(free_port)"; BASE[$s]=${NODES[$s]# };;
    s3|s3r) PREFIX[$s]=$s; s3_opts "$s"
      if [ "$s" = s3 ]; then LABEL[$s]="1 node, S3, streamed"; else LABEL[$s]="1 node, S3, --s3-redirect"; S3OPTS+=(--s3-redirect --s3-public-endpoint "$MOTO_URL"); fi
      start_node "$s" 1 "$(free_port)" "${S3OPTS[@]}"; BASE[$s]=${NODES[$s]# };;
    region|regionr) PREFIX[$s]=$s; s3_opts "$s"
      if [ "$s" = region ]; then LABEL[$s]="2 nodes + nginx, S3, streamed"; else LABEL[$s]="2 nodes + nginx, S3, --s3-redirect"; S3OPTS+=(--s3-redirect --s3-public-endpoint "$MOTO_URL"); fi
      for i in 1 2; do
        port=$(free_port)   # --node-url: where the other node reaches this one
        start_node "$s" "$i" "$port" "${S3OPTS[@]}" --node-url "http://127.0.0.1:$port"
      done;;
  esac
}
# nginx in front of each region: one server block per region setup, round robin over its nodes
start_lb() {
  local pfx="$BENCH_TMP/nginx" s n port conf=""
  mkdir -p "$pfx/logs" "$pfx/tmp"
  for s in $SETUPS; do
    case $s in region|regionr) ;; *) continue;; esac
    port=$(free_port); BASE[$s]="http://127.0.0.1:$port"
    conf+="  upstream $s {"$'\n'
    for n in ${NODES[$s]}; do conf+="    server ${n#http://};"$'\n'; done
    conf+="    keepalive 32;"$'\n'"  }"$'\n'
    conf+="  server {"$'\n'"    listen 127.0.0.1:$port;"$'\n'"    location / { proxy_pass http://$s; }"$'\n'"  }"$'\n'
  done
  cat >"$pfx/nginx.conf" <<EOF
worker_processes ${NGINX_WORKERS:-auto};
pid $pfx/nginx.pid;
error_log $pfx/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $pfx/tmp/body;
  proxy_temp_path $pfx/tmp/proxy;
  fastcgi_temp_path $pfx/tmp/fastcgi;
  uwsgi_temp_path $pfx/tmp/uwsgi;
  scgi_temp_path $pfx/tmp/scgi;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host \$http_host;
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_buffering off;
  proxy_request_buffering off;${NGINX_PROXY_BUFFER_SIZE:+
  proxy_buffer_size $NGINX_PROXY_BUFFER_SIZE;
  proxy_buffers 4 $NGINX_PROXY_BUFFER_SIZE;
  proxy_busy_buffers_size $NGINX_PROXY_BUFFER_SIZE;}
  proxy_read_timeout 300s;
$conf}
EOF
  "$NGINX_BIN" -p "$pfx" -c "$pfx/nginx.conf" -g 'daemon off;' >"$pfx/logs/stdout.log" 2>&1 &
  NGINX_PID=$!
  BENCH_PIDS+=("$NGINX_PID")
  for s in $SETUPS; do
    # nginx tells a bad configuration on stderr, before it opens its error log
    case $s in region|regionr) wait_http "${BASE[$s]}/healthz" 20 "$NGINX_PID" "$pfx/logs/stdout.log";; esac
  done
  log "nginx (pid $NGINX_PID): $(for s in $SETUPS; do case $s in region*) printf '%s %s -> %s; ' "$s" "${BASE[$s]}" "${NODES[$s]}";; esac; done)"
}

# presign KEY METHOD [KEY METHOD...] -> one presigned URL per line (boto3 from moto's
# virtualenv; moto answers an unsigned GET or HEAD of an object with 403)
presign() {
  "$MOTO_PY" - "$MOTO_URL" "$BUCKET" "$@" <<'PY' || die "presigning URLs with boto3 ($MOTO_PY) failed"
import sys
import boto3
from botocore.config import Config
endpoint, bucket, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                  aws_secret_access_key="bench-secret", config=Config(s3={"addressing_style": "path"}))
for key, method in zip(rest[::2], rest[1::2]):
    print(s3.generate_presigned_url(method, Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600))
PY
}
blob_key() { echo "${PREFIX[$1]}/blobs/sha256/${2:0:2}/$2"; }   # blob_key SETUP HEX
declare -A HEAD_URL=()
# published SETUP HEX: the blob is in the setup's store (a local file, or the bucket's key)
published() {
  local s=$1 hex=$2
  if [ "$s" = local ]; then [ -f "${DATA[$s]}/blobs/sha256/${hex:0:2}/$hex" ]; return; fi
  [ -n "${HEAD_URL[$s,$hex]:-}" ] || HEAD_URL[$s,$hex]=$(presign "$(blob_key "$s" "$hex")" head_object)
  [ "$(curl -s -o /dev/null -w '%{http_code}' -I "${HEAD_URL[$s,$hex]}")" = 200 ]
}
wait_published() {  # wait_published SETUP HEX (max 120 s): the fill's upload to the bucket is done
  local i
  for i in $(seq 600); do published "$1" "$2" && return 0; sleep 0.2; done
  [ "$1" = local ] || "$MOTO_PY" - "$MOTO_URL" "$BUCKET" "${PREFIX[$1]}/" <<'PY' >&2 || true
import sys
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="bench",
                  aws_secret_access_key="bench-secret", config=Config(s3={"addressing_style": "path"}))
keys = s3.list_objects_v2(Bucket=sys.argv[2], Prefix=sys.argv[3]).get("Contents", [])
print("keys under %s: %s" % (sys.argv[3], ", ".join("%s (%d)" % (k["Key"], k["Size"]) for k in keys[:30]) or "none"))
PY
  die "$1: sha256:$2 not in its store 120 s after its fill (expected key $([ "$1" = local ] && echo "blobs/..." || blob_key "$1" "$2"))"
}
node_counters() {  # node_counters SETUP -> JSON {"nodes": ..., "sum": ...} of the nodes' own counters
  "$PYTHON" "$BENCH_DIR/region_client.py" stats ${NODES[$1]} || die "$1: GET /stats failed"
}

# -- run -------------------------------------------------------------------------------------
log "scratch dir $BENCH_TMP; setups: $SETUPS"
NL=$((COLD + 2))
log "making an image of $NL x $LAYER_MB MiB"
"$PYTHON" "$BENCH_DIR/mkimage.py" --layers "$NL" --size-mb "$LAYER_MB" --compression gzip --gzip-level 0 \
  --out "$BENCH_TMP/img" --tag v1 >"$BENCH_TMP/img.json" 2>/dev/null || die "mkimage.py failed"
mapfile -t LAYER_LINES < <("$PYTHON" -c 'import json,sys
for l in json.load(open(sys.argv[1]))["layers"]: print(l["digest"], l["size"])' "$BENCH_TMP/img.json")
DIGESTS=(); SIZES=()
for l in "${LAYER_LINES[@]}"; do DIGESTS+=("${l% *}"); SIZES+=("${l#* }"); done
WARM=0; HERD_L=$((NL - 1))   # layer 0: the warm layer; 1..COLD: cold only; last: the herd's

# Grants valid an hour: the run re-uses them. SQLite: MSR's database is not on the measured path.
MSR_DB=sqlite; MSR_SETUP_ENV=("MSR_CACHE_GRANT_TTL=3600")
setup_msr
skopeo copy --quiet --dest-tls-verify=false --dest-creds "$MSR_CREDS" "oci:$BENCH_TMP/img:v1" \
  "docker://$MSR_HOSTPORT/admin/region:v1" >"$BENCH_TMP/push.out" 2>&1 || { cat "$BENCH_TMP/push.out" >&2; die "push to MSR failed"; }
rm -rf "$BENCH_TMP/img"
api PATCH repositories/admin/region '{"visibility":"public"}' >/dev/null
start_counter
if [ "$NEED_S3" = 1 ]; then
  start_store
  s3_create_bucket "$MOTO_URL" "$BUCKET"
  log "moto_server at $MOTO_URL (pid $MOTO_PID), bucket $BUCKET"
fi
for s in $SETUPS; do start_setup "$s"; done
[ "$NEED_NGINX" = 0 ] || start_lb

# one grant per layer: the query of MSR's 307 to the cache, for a user whose default cache it is
api POST content_caches "{\"name\":\"$CACHE_NAME\",\"url\":\"${BASE[${SETUPS%% *}]}\"}" >/dev/null
PULLER="puller:pull-$(rnd)"
api POST accounts "{\"name\":\"puller\",\"password\":\"${PULLER#*:}\"}" >/dev/null
api PATCH accounts/puller/settings "{\"defaultContentCache\":\"$CACHE_NAME\"}" >/dev/null
TOKEN=$(MSR_CREDS=$PULLER; msr_token "repository:admin/region:pull")
GRANTQ=()
for i in "${!DIGESTS[@]}"; do
  read -r code loc < <(curl -s -o /dev/null -w '%{http_code} %{redirect_url}\n' \
    -H "Authorization: Bearer $TOKEN" "$MSR_URL/v2/admin/region/blobs/${DIGESTS[$i]}")
  [ "$code" = 307 ] && [[ $loc == *"?"*grant=* ]] || die "MSR's answer to a blob GET by puller: HTTP $code, Location '$loc' (expected a 307 with a grant)"
  GRANTQ[$i]=${loc#*\?}
done
url() { echo "${BASE[$1]}/v2/admin/region/blobs/${DIGESTS[$2]}?${GRANTQ[$2]}"; }   # url SETUP LAYER
log "grants for ${#DIGESTS[@]} layers from MSR"

is_hit() {  # is_hit GET_JSON: every GET a hit (X-Cache: HIT from the node, or a 307 to the bucket), all alike
  "$PYTHON" -c 'import json,sys; d=json.loads(sys.argv[1])
sys.exit(not all(x == "HIT" or r > 0 for x, r in zip(d["x_cache"], d["redirects"])) or len(set(d["redirects"])) != 1)' "$1"
}
declare -A COLD_T=() COLD_TOT=() HIT_T=() HIT_REDIR=() HERDR=() TP=()
for s in $SETUPS; do
  # cold: the first GET of the warm layer and of each cold-only layer
  for i in $(seq 0 "$COLD"); do
    out=$("$PYTHON" "$BENCH_DIR/region_client.py" get "$(url "$s" "$i")" --size "${SIZES[$i]}" --digest "${DIGESTS[$i]}") \
      || die "$s: cold GET of layer $i failed"
    COLD_T[$s]+=" $(jget ttfb 0 <<<"$out")"; COLD_TOT[$s]+=" $(jget total 0 <<<"$out")"
    log "$s cold layer $i: $out"
    # the fill's upload to the store ends after the client's body: the next miss must not
    # queue behind it (the emulator serializes writes)
    wait_published "$s" "${DIGESTS[$i]#sha256:}"
  done
  # the herd: one new layer, --herd clients at once
  hex=${DIGESTS[$HERD_L]#sha256:}
  upstream_settle
  b0=$(upstream_down); g0=$(upstream_gets "$hex"); n0=$(node_counters "$s")
  out=$("$PYTHON" "$BENCH_DIR/region_client.py" herd "$(url "$s" "$HERD_L")" --n "$HERD" \
        --size "${SIZES[$HERD_L]}" --digest "${DIGESTS[$HERD_L]}") || die "$s: herd failed: $out"
  wait_published "$s" "$hex"; upstream_settle
  b1=$(upstream_down); g1=$(upstream_gets "$hex"); n1=$(node_counters "$s")
  HERDR[$s]=$("$PYTHON" -c 'import json,sys
h, n0, n1 = (json.loads(a) for a in sys.argv[1:4]); b0, b1, g0, g1, size = map(int, sys.argv[4:9])
per = {u: n1["nodes"][u]["bytes_from_upstream"] - n0["nodes"][u]["bytes_from_upstream"] for u in n1["nodes"]}
fetches = sum(n1["nodes"][u]["upstream_fetches"] - n0["nodes"][u]["upstream_fetches"] for u in n1["nodes"])
print(json.dumps({"wall": h["wall"], "ttfb_median": h["ttfb_median"], "ttfb_max": h["ttfb_max"], "x_cache": h["x_cache"],
                  "proxy_bytes": b1 - b0, "proxy_gets": g1 - g0, "size": size, "node_bytes": sum(per.values()),
                  "node_bytes_per_node": list(per.values()), "node_fetches": fetches}))' \
    "$out" "$n0" "$n1" "$b0" "$b1" "$g0" "$g1" "${SIZES[$HERD_L]}")
  log "$s herd of $HERD: ${HERDR[$s]}"
  # the warm layer, once it is in the store: one checked GET (a hit; its body's digest), which
  # also says whether hits here are redirected
  wait_published "$s" "${DIGESTS[$WARM]#sha256:}"
  out=$("$PYTHON" "$BENCH_DIR/region_client.py" get "$(url "$s" "$WARM")" --size "${SIZES[$WARM]}" --digest "${DIGESTS[$WARM]}") \
    || die "$s: hit GET failed"
  is_hit "$out" || die "$s: the warm layer's GET is not a hit: $out"
  HIT_REDIR[$s]=$(jget redirects 0 <<<"$out")
done

# hit throughput: C curl clients x REPS GETs of the warm layer; the setups' order rotates
batch() {  # batch URL REDIRECTS -> aggregate MiB/s (fails on a wrong status, size or redirect count)
  local url=$1 want_r=$2 out="$BENCH_TMP/batch.out" i pids=() t0 t1 size=${SIZES[$WARM]}
  : >"$out"
  t0=$EPOCHREALTIME
  for i in $(seq "$CLIENTS"); do
    ( for _ in $(seq "$REPS"); do
        curl -s -L -o /dev/null -w '%{http_code} %{size_download} %{num_redirects}\n' "$url" || echo "curl-failed 0 0"
      done >>"$out" ) &
    pids+=($!)
  done
  wait "${pids[@]}"
  t1=$EPOCHREALTIME
  awk -v t0="$t0" -v t1="$t1" -v want="$size" -v r="$want_r" -v n=$((CLIENTS * REPS)) -v url="${url%%\?*}" '
    { if ($1 != 200 || $2 != want || $3 != r) bad++; b += $2; k++ }
    END { if (bad || k != n) { printf "bad answers (%d of %d not 200 with %d bytes after %d redirects) from %s\n", bad, k, want, r, url > "/dev/stderr"; exit 1 }
          printf "%.1f\n", b / (t1 - t0) / 1048576 }' "$out"
}
# the bucket alone: the same object fetched from moto without a node (a presigned GET),
# the ceiling of every S3 setup on this machine
TP_SETUPS=$SETUPS
for s in $SETUPS; do
  case $s in s3|s3r|region|regionr)
    TP_SETUPS+=" bucket"; LABEL[bucket]="moto alone (presigned GET of the object, no node)"; HIT_REDIR[bucket]=0
    BUCKET_URL=$(presign "$(blob_key "$s" "${DIGESTS[$WARM]#sha256:}")" get_object)
    break;;
  esac
done
tp_url() { if [ "$1" = bucket ]; then echo "$BUCKET_URL"; else url "$1" "$WARM"; fi; }
declare -A TPV=()
read -ra ORDER <<<"$TP_SETUPS"
for s in "${ORDER[@]}"; do   # one batch each, not counted: connection pools, page cache
  batch "$(tp_url "$s")" "${HIT_REDIR[$s]}" >/dev/null || die "$s: warm-up batch failed"
done
# CPU seconds during the counted batches, per setup: its nodes, moto, nginx, the curl
# clients, and the whole machine (the rest is other work: samplers, other users)
declare -A CPU=()
cpu_of() { if [ -n "${1// /}" ]; then tree_cpu $1; else echo 0; fi; }
cpu_snap() {  # cpu_snap SETUP -> "nodes moto nginx"
  local n=""; [ "$1" = bucket ] || n=${NPIDS[$1]}
  echo "$(cpu_of "$n") $(cpu_of "${MOTO_PID:-}") $(cpu_of "${NGINX_PID:-}")"
}
cpu_add() {  # cpu_add SETUP "BEFORE" "AFTER" K0 K1 M0 M1
  CPU[$1]=$(awk -v acc="${CPU[$1]:-0 0 0 0 0}" -v a="$2" -v b="$3" -v k0="$4" -v k1="$5" -v m0="$6" -v m1="$7" 'BEGIN{
    split(acc, c, " "); split(a, x, " "); split(b, y, " ")
    printf "%.2f %.2f %.2f %.2f %.2f\n", c[1] + y[1] - x[1], c[2] + y[2] - x[2], c[3] + y[3] - x[3], c[4] + k1 - k0, c[5] + m1 - m0 }')
}
BUSY0=$(machine_busy_cpu); sleep 5; BUSY1=$(machine_busy_cpu)
BUSY_START=$(awk -v a="$BUSY0" -v b="$BUSY1" -v n="$(nproc)" 'BEGIN{ printf "%.0f\n", 100 * (b - a) / (5 * n) }')
log "machine $BUSY_START % busy over 5 s before the throughput rounds"
T_TP=$SECONDS
for r in $(seq "$RUNS"); do
  for k in "${!ORDER[@]}"; do
    s=${ORDER[$(((k + r - 1) % ${#ORDER[@]}))]}
    u=$(tp_url "$s"); c0=$(cpu_snap "$s"); children_cpu k0; m0=$(machine_busy_cpu)
    v=$(batch "$u" "${HIT_REDIR[$s]}") || die "$s: throughput batch failed"
    m1=$(machine_busy_cpu); children_cpu k1; c1=$(cpu_snap "$s")
    cpu_add "$s" "$c0" "$c1" "$k0" "$k1" "$m0" "$m1"
    TPV[$s]+=" $v"
  done
  log "throughput round $r/$RUNS: $(for s in $TP_SETUPS; do printf '%s %s; ' "$s" "${TPV[$s]##* }"; done)MiB/s"
done

TP_S=$((SECONDS - T_TP))

# hit TTFB, after the rounds (every node process has its S3 clients by then): one GET after
# another, each on new connections
for s in $SETUPS; do
  out=$("$PYTHON" "$BENCH_DIR/region_client.py" get "$(url "$s" "$WARM")" --reps "$TTFB_REPS" --size "${SIZES[$WARM]}") \
    || die "$s: hit GETs failed"
  is_hit "$out" && [ "$(jget redirects 0 <<<"$out")" = "${HIT_REDIR[$s]}" ] || die "$s: the warm layer's GETs are not all hits like the first: $out"
  HIT_T[$s]=$("$PYTHON" -c 'import json,sys; print(" ".join(str(x) for x in json.loads(sys.argv[1])["ttfb"]))' "$out")
  log "$s hit TTFB: ${HIT_T[$s]} s (redirects ${HIT_REDIR[$s]})"
done
if [ -n "${BUCKET_URL:-}" ]; then   # moto's own first byte for the object
  out=$("$PYTHON" "$BENCH_DIR/region_client.py" get "$BUCKET_URL" --reps "$TTFB_REPS" --size "${SIZES[$WARM]}") \
    || die "moto: GETs of the object failed"
  HIT_T[bucket]=$("$PYTHON" -c 'import json,sys; print(" ".join(str(x) for x in json.loads(sys.argv[1])["ttfb"]))' "$out")
  log "moto alone TTFB: ${HIT_T[bucket]} s"
fi

# -- report ---------------------------------------------------------------------------------
LAYER_BYTES=${SIZES[$WARM]}
VERSIONS=""
if [ "$NEED_S3" = 1 ]; then
  VERSIONS=$("$MOTO_PY" -c 'import moto, boto3; print(f"moto {moto.__version__}, boto3 {boto3.__version__}")' 2>/dev/null || echo "moto ?")
fi
TREE="$(cd "$REPO_ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
DIRTY=$(cd "$REPO_ROOT" && git status --porcelain -- msr caches protocol 2>/dev/null | wc -l)
[ "$DIRTY" = 0 ] || TREE+=" + uncommitted changes in $DIRTY file(s)"
REPORT="$BENCH_TMP/report.md"
{
  echo "## A region of cache nodes on a shared store (region.sh)"
  echo
  echo "- machine: $(host_summary); load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; tree $TREE"
  echo "- nodes: \`msr cache\` (2 workers x 16 threads), one --name; upstream: MSR (\`msr serve\`, SQLite, filesystem store) through a counting proxy"
  [ "$NEED_S3" = 0 ] || echo "- S3: $VERSIONS; one moto on 127.0.0.1, $([ "$PLAIN_MOTO" = 1 ] && echo "moto_server as it is" || echo "writes serialized by tests/fixtures/moto_atomic.py (atomic conditional writes)"); an emulator in Python: its speed bounds every S3 figure, a prefix per setup, path-style"
  [ "$NEED_NGINX" = 0 ] || echo "- load balancer: $("$NGINX_BIN" -v 2>&1 | sed 's|.*: ||'), round robin over the region's 2 nodes, proxy_buffering off, HTTP/1.1 kept alive, proxy_buffer_size ${NGINX_PROXY_BUFFER_SIZE:-default (one page)}, worker_processes ${NGINX_WORKERS:-auto}"
  echo "- layers: $LAYER_MB MiB of random data ($LAYER_BYTES bytes); command: \`bench/region.sh${ORIG_ARGS:+ $ORIG_ARGS}\`"
  echo
  echo "| setup | hit MiB/s, $CLIENTS clients: min / median / max of $RUNS | hit TTFB ms (median of $TTFB_REPS) | cold miss TTFB ms (median of $((COLD + 1))) | cold miss, whole layer s | herd of $HERD: upstream bytes / layer | upstream GETs (proxy) | fetches / bytes (nodes' own /stats) | herd s |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for s in $TP_SETUPS; do
    read -r mn mx < <(printf '%s\n' ${TPV[$s]} | minmax)
    TP[$s]=$(printf '%s\n' ${TPV[$s]} | median)
    if [ "$s" = bucket ]; then
      printf '| %s | %s / %s / %s | %s | | | | | | |\n' "${LABEL[$s]}" "$(fmt "$mn" 0)" "$(fmt "${TP[$s]}" 0)" "$(fmt "$mx" 0)" \
        "$(ms "$(printf '%s\n' ${HIT_T[$s]} | median)")"
      continue
    fi
    h=${HERDR[$s]}
    read -r pb pg nf nb wall < <("$PYTHON" -c 'import json,sys; h=json.loads(sys.argv[1])
print("%.2f" % (h["proxy_bytes"] / h["size"]), h["proxy_gets"], h["node_fetches"], "%.2f" % (h["node_bytes"] / h["size"]), "%.1f" % h["wall"])' "$h")
    printf '| %s | %s / %s / %s | %s | %s | %s | %sx | %s | %s / %sx | %s |\n' "${LABEL[$s]}" \
      "$(fmt "$mn" 0)" "$(fmt "${TP[$s]}" 0)" "$(fmt "$mx" 0)" "$(ms "$(printf '%s\n' ${HIT_T[$s]} | median)")" \
      "$(ms "$(printf '%s\n' ${COLD_T[$s]} | median)")" "$(fmt "$(printf '%s\n' ${COLD_TOT[$s]} | median)")" \
      "$pb" "$pg" "$nf" "$nb" "$wall"
  done
  echo
  echo "Upstream bytes: out of the counting proxy (MSR -> nodes, headers included) while the herd ran, over the layer's size;"
  echo "fetches / bytes: the sum over the setup's nodes of their own upstream_fetches and bytes_from_upstream (each node asked directly)."
  echo "Herd s: from the start of the $HERD GETs to the last body (each hashed by the client)."
  echo
  for pair in "s3 s3r" "region regionr" "s3 region" "s3r regionr" "local s3" "bucket s3" "bucket s3r" "bucket region" "bucket regionr"; do
    set -- $pair
    [ -n "${TP[$1]:-}" ] && [ -n "${TP[$2]:-}" ] || continue
    echo "- hit MiB/s, ${LABEL[$2]} / ${LABEL[$1]}: $(ratio "${TP[$2]}" "${TP[$1]}")"
  done
  echo
  echo "CPU seconds per GiB of hits served (all counted batches of a setup: $((RUNS * CLIENTS * REPS)) GETs of $LAYER_MB MiB), from /proc:"
  echo "the setup's nodes (every process), moto, nginx, the curl clients, and what the rest of the machine used meanwhile."
  echo "The machine was $BUSY_START % busy over 5 s before the rounds; the rounds took $TP_S s."
  echo
  echo "| setup | nodes | moto | nginx | curl clients | rest of the machine |"
  echo "|---|---:|---:|---:|---:|---:|"
  GIB=$(awk -v n=$((RUNS * CLIENTS * REPS)) -v b="$LAYER_BYTES" 'BEGIN{ printf "%.6f\n", n * b / 1073741824 }')
  for s in $TP_SETUPS; do
    awk -v c="${CPU[$s]}" -v g="$GIB" -v l="${LABEL[$s]}" 'BEGIN{ split(c, x, " ")
      rest = x[5] - x[1] - x[2] - x[3] - x[4]; if (rest < 0) rest = 0
      printf "| %s | %.2f | %.2f | %.2f | %.2f | %.2f |\n", l, x[1] / g, x[2] / g, x[3] / g, x[4] / g, rest / g }'
  done
  echo
  echo "- per round (MiB/s), after one uncounted batch each: $(for s in $TP_SETUPS; do printf '%s:%s; ' "$s" "${TPV[$s]}"; done)"
  for s in $SETUPS; do
    echo "- $s herd: $("$PYTHON" -c 'import json,sys; h=json.loads(sys.argv[1])
print("first byte median %.0f ms, max %.0f ms; X-Cache %s; bytes from upstream per node %s" % (h["ttfb_median"]*1000, h["ttfb_max"]*1000,
      ", ".join("%s x %d" % kv for kv in sorted(h["x_cache"].items())), h["node_bytes_per_node"]))' "${HERDR[$s]}")"
  done
  echo
} >"$REPORT"

cat "$REPORT"
if [ "$SAVE" = 1 ]; then
  { echo "# MSR region benchmark, $TS"; echo; cat "$REPORT"; } >"$RES"
  log "results: $RES"
fi
