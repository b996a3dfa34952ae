#!/usr/bin/env bash
# Load test (issue 7): --clients concurrent clients (default 200) pulling one small image
# over and over for --duration seconds (default 60), one target after another in the
# same run:
#   nginx    the same manifest and blob files served statically (sendfile): the ceiling
#            of this client on this machine, no registry logic at all
#   dist     CNCF Distribution (docker-registry), filesystem storage, WITHOUT auth
#   msr      MSR (`msr serve`, scratch data dir), user `far` (no cache): bearer token,
#            manifest and blobs from MSR
#   cache    MSR + a cache node (`msr cache`, loopback), user `near` whose default cache
#            is the node: manifest from MSR, each blob GET answered by MSR with a 307 to
#            the node (grant in the URL), then fetched from the node (warm: every blob
#            is fetched once by a check pull before the window)
# Image: mkimage.py, --sizes-mb layers (default 1,2,2,3,4 MiB, gzip level 0) + config,
# pushed with skopeo to MSR (admin/load, public) and docker-registry.
# Client: load_client.py (asyncio, --procs processes). A pull = GET manifest by tag
# (digest checked), then GET config and each layer in order (status and size checked;
# the 307 Location must point at the node), over keep-alive connections, one per host
# per client. MSR clients log in once at start (GET /v2/ -> 401, GET /auth/token with
# Basic credentials, one token per client, reused until it expires). Any unexpected
# status, socket error, short body or wrong digest is an error; a target with an error
# fails the run, as do a cache miss in the window, node hits != blob GETs, or MSR's pull
# audit rows != manifest GETs answered. The report also gives CPU seconds per process
# tree in the window, the machine's busy share, peak RSS and the load average. A request
# that fails on a reused connection before any byte of the answer is re-sent once on a
# new one, as Go's net/http does (counted and reported, not an error).
#
# Usage: ./load.sh [--clients 200] [--duration 60] [--procs 2] [--sizes-mb 1,2,2,3,4]
#          [--targets "nginx dist msr cache"] [--pause 5] [--timeout 60] [--max-busy PCT]
#          [--out DIR | --no-save] [common options, see below; not --msr-url]
#   --procs      client processes (asyncio each; clients are split among them)
#   --max-busy   before each target, measure the machine's busy CPU share over 5 s (our
#                servers idle, so that is other people's work) and wait, up to 10 min,
#                until it is below PCT %; the share is reported either way
#   --out DIR    results go to DIR/<UTC time>-load.md (+ .log); default bench/results
# Defaults: about 5-6 minutes on 2 cores (4 targets x (login + 60 s) + setup).
# Smoke test (~1.5 min): ./load.sh --clients 20 --duration 5 --sizes-mb 0.1,0.2 --no-save
# Needs: bash, python3, curl, skopeo, docker-registry, nginx, msr.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

ORIG_ARGS="$*"
CLIENTS=200; DURATION=60; PROCS=2; SIZES=1,2,2,3,4; TARGETS="nginx dist msr cache"
PAUSE=5; TIMEOUT=60; MAX_BUSY=""; OUT="$BENCH_DIR/results"; SAVE=1
while [ $# -gt 0 ]; do
  case $1 in
    --clients) CLIENTS=$2; shift 2;;
    --duration) DURATION=$2; shift 2;;
    --procs) PROCS=$2; shift 2;;
    --sizes-mb) SIZES=$2; shift 2;;
    --targets) TARGETS=$2; shift 2;;
    --pause) PAUSE=$2; shift 2;;
    --timeout) TIMEOUT=$2; shift 2;;
    --max-busy) MAX_BUSY=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --no-save) SAVE=0; shift;;
    -h|--help) usage; exit 0;;
    *) common_opt "$@" || die "unknown argument $1 (see --help)"; shift "$COMMON_SHIFT";;
  esac
done
for v in CLIENTS PROCS PAUSE; do [[ ${!v} =~ ^[0-9]+$ ]] || die "$v: ${!v} is not a whole number"; done
[ "$CLIENTS" -ge 1 ] && [ "$PROCS" -ge 1 ] && [ "$PROCS" -le "$CLIENTS" ] || die "need 1 <= --procs <= --clients"
for v in DURATION TIMEOUT; do [[ ${!v} =~ ^[0-9]+([.][0-9]+)?$ ]] || die "bad value ${!v} for $v"; done
[[ $SIZES =~ ^[0-9.]+(,[0-9.]+)*$ ]] || die "--sizes-mb: comma-separated MiB, e.g. 1,2,2,3,4"
[ -z "$MAX_BUSY" ] || [[ $MAX_BUSY =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--max-busy: a percentage"
for t in $TARGETS; do case $t in nginx|dist|msr|cache) ;; *) die "--targets: nginx dist msr cache";; esac; done
[ -z "$MSR_URL_ARG" ] || die "load.sh starts its own MSR and cache node; --msr-url is not supported"
need "$PYTHON" curl skopeo "$REGISTRY_BIN"
[[ " $TARGETS " != *" nginx "* ]] || need "$NGINX_BIN"
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((CLIENTS * 2 + 100)) ] \
  || ulimit -n $((CLIENTS * 2 + 100)) 2>/dev/null || die "open files limit $(ulimit -n) is too low for $CLIENTS clients"

TS=$(date -u +%Y%m%dT%H%M%SZ)
if [ "$SAVE" = 1 ]; then
  mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
  RES="$OUT/$TS-load.md"; LOGF="$OUT/$TS-load.log"
  exec 2> >(tee -a "$LOGF" >&2)
fi
UPTIME_START=$(uptime)

CACHE_PID=""
load_cleanup() {
  local rc=$? f
  if [ "$rc" != 0 ] && [ -n "$BENCH_TMP" ]; then
    for f in msr.log cache.log registry.log; do
      [ -s "$BENCH_TMP/$f" ] || continue
      echo "--- last lines of $f:" >&2; tail -n 15 "$BENCH_TMP/$f" >&2
    done
  fi
  cd /
  stop_gunicorn "$CACHE_PID"; CACHE_PID=""
  bench_cleanup
}
bench_mktemp
trap load_cleanup EXIT
trap 'exit 130' INT TERM
cd "$BENCH_TMP"   # every process started here runs in the scratch dir

jfield() { "$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): d = d[k]
print(d)' "$1" "$2"; }
has() { [[ " $TARGETS " == *" $1 "* ]]; }

# -- image ------------------------------------------------------------------------------
REPO=load
"$PYTHON" "$BENCH_DIR/mkimage.py" --sizes-mb "$SIZES" --compression gzip --gzip-level 0 \
  --out "$BENCH_TMP/img" --tag v1 >"$BENCH_TMP/img.json" 2>/dev/null || die "mkimage.py failed"
MDIGEST=$(jfield "$BENCH_TMP/img.json" manifest_digest)
read -r NBLOBS IMG_BYTES < <("$PYTHON" -c 'import json,os,sys
d = json.load(open(sys.argv[1]))
cfg = os.path.getsize(os.path.join(d["layout"], "blobs", "sha256", d["config_digest"].split(":")[1]))
print(len(d["layers"]) + 1, cfg + sum(l["size"] for l in d["layers"]))' "$BENCH_TMP/img.json")
IMG_DESC="$((NBLOBS - 1)) layers of $SIZES MiB + config, $(awk -v b="$IMG_BYTES" 'BEGIN{printf "%.2f", b/1048576}') MiB of blobs"
log "image: $IMG_DESC, manifest $MDIGEST"

# -- servers ----------------------------------------------------------------------------
URLS=(); declare -A URL CREDS REDIRECT WATCH LABEL
if has msr || has cache; then
  setup_msr
  skopeo copy --quiet --dest-tls-verify=false --dest-creds "$MSR_CREDS" "oci:$BENCH_TMP/img:v1" \
    "docker://$MSR_HOSTPORT/admin/$REPO:v1" >"$BENCH_TMP/push.out" 2>&1 \
    || { cat "$BENCH_TMP/push.out" >&2; die "push to MSR failed"; }
  api PATCH "repositories/admin/$REPO" '{"visibility":"public"}' >/dev/null
  FAR_CREDS="far:far-$(rnd)"; NEAR_CREDS="near:near-$(rnd)"
  api POST accounts "{\"name\":\"far\",\"password\":\"${FAR_CREDS#*:}\"}" >/dev/null
  api POST accounts "{\"name\":\"near\",\"password\":\"${NEAR_CREDS#*:}\"}" >/dev/null
  AUDIT_DB=""
  [ "$MSR_DB" = sqlite ] && AUDIT_DB="$BENCH_TMP/msr-data/msr.sqlite3"
  URL[msr]=$MSR_URL; CREDS[msr]=$FAR_CREDS; REDIRECT[msr]=""; WATCH[msr]="msr=$MSR_PID"
  LABEL[msr]="$MSR_LABEL, bearer token"
fi
if has cache; then
  CP=$(free_port)
  CENV=()   # as for MSR: nothing from the environment but log level
  for v in $(compgen -e); do
    case $v in MSR_LOG_LEVEL) ;; MSR_*|DATABASE_URL*) CENV+=(-u "$v");; esac
  done
  (exec env "${CENV[@]}" "$MSR_BIN" cache --name edge --msr "$MSR_URL" --upstream "$MSR_URL" \
     --data "$BENCH_TMP/cache-data" --bind "127.0.0.1:$CP") >"$BENCH_TMP/cache.log" 2>&1 &
  CACHE_PID=$!
  CACHE_URL="http://127.0.0.1:$CP"
  wait_http "$CACHE_URL/healthz" 60 "$CACHE_PID" "$BENCH_TMP/cache.log"
  CACHE_ID=$(api POST content_caches "{\"name\":\"edge\",\"url\":\"$CACHE_URL\"}" \
    | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  api PATCH accounts/near/settings '{"defaultContentCache":"edge"}' >/dev/null
  log "cache node 'edge' at $CACHE_URL (pid $CACHE_PID, id $CACHE_ID); user near -> edge"
  URL[cache]=$MSR_URL; CREDS[cache]=$NEAR_CREDS; REDIRECT[cache]="$CACHE_URL/"
  WATCH[cache]="msr=$MSR_PID cache=$CACHE_PID"
  LABEL[cache]="MSR + \`msr cache\` node (2 workers x 16 threads), 307 per blob"
fi
if has dist; then
  RP=$(free_port); start_registry "$RP" "$BENCH_TMP/registry"
  skopeo copy --quiet --dest-tls-verify=false "oci:$BENCH_TMP/img:v1" \
    "docker://$REGISTRY_HOSTPORT/admin/$REPO:v1" >"$BENCH_TMP/push.out" 2>&1 \
    || { cat "$BENCH_TMP/push.out" >&2; die "push to docker-registry failed"; }
  URL[dist]="http://$REGISTRY_HOSTPORT"; CREDS[dist]=""; REDIRECT[dist]=""; WATCH[dist]="dist=$REGISTRY_PID"
  LABEL[dist]="Distribution $(registry_version) (docker-registry), no auth"
fi
if has nginx; then
  S="$BENCH_TMP/static/v2/admin/$REPO"
  mkdir -p "$S/manifests" "$S/blobs"
  cp "$BENCH_TMP/img/blobs/sha256/${MDIGEST#sha256:}" "$S/manifests/v1"
  for f in "$BENCH_TMP"/img/blobs/sha256/*; do ln "$f" "$S/blobs/sha256:$(basename "$f")"; done
  NP=$(free_port); start_nginx "$NP" "$BENCH_TMP/static"
  URL[nginx]="http://127.0.0.1:$NP"; CREDS[nginx]=""; REDIRECT[nginx]=""; WATCH[nginx]="nginx=$NGINX_PID"
  LABEL[nginx]="nginx $("$NGINX_BIN" -v 2>&1 | sed 's|.*/||') (static files, client ceiling)"
fi

# -- runs -------------------------------------------------------------------------------
busy5() {  # the machine's busy CPU share (%) over 5 s
  "$PYTHON" -c 'import time
def s():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v[:8]), v[3] + v[4]
a = s(); time.sleep(5); b = s()
print("%.0f" % (100.0 * ((b[0] - a[0]) - (b[1] - a[1])) / max(1, b[0] - a[0])))'
}
declare -A BUSY_BEFORE
wait_quiet() {  # wait_quiet TARGET: BUSY_BEFORE[TARGET]; waits while above --max-busy
  local i b
  for i in $(seq 120); do
    b=$(busy5)
    [ -n "$MAX_BUSY" ] && [ "$b" -ge "$MAX_BUSY" ] || break
    [ "$i" = 1 ] && log "machine $b % busy before $1 (other work): waiting until below $MAX_BUSY % (up to 10 min)"
  done
  [ -z "$MAX_BUSY" ] || [ "$b" -lt "$MAX_BUSY" ] || log "machine still $b % busy after 10 min: going on (reported)"
  BUSY_BEFORE[$1]=$b
}
JSONS=(); FAILS=(); NOTES=(); BUSY_ARGS=()
first=1
for t in $TARGETS; do
  [ "$first" = 1 ] || sleep "$PAUSE"
  first=0
  wait_quiet "$t"
  args=(run --url "${URL[$t]}" --repo "admin/$REPO" --tag v1 --manifest-digest "$MDIGEST"
        --clients "$CLIENTS" --procs "$PROCS" --duration "$DURATION" --timeout "$TIMEOUT"
        --label "${LABEL[$t]}" --out "$BENCH_TMP/run-$t.json")
  [ -z "${CREDS[$t]}" ] || args+=(--creds "${CREDS[$t]}")
  [ -z "${REDIRECT[$t]}" ] || args+=(--redirect-to "${REDIRECT[$t]}" --cache-stats "$CACHE_URL/stats")
  for w in ${WATCH[$t]}; do args+=(--watch "$w"); done
  if [ "$t" = msr ] || [ "$t" = cache ]; then [ -z "$AUDIT_DB" ] || args+=(--audit-db "$AUDIT_DB"); fi
  log "$t: $CLIENTS clients x ${DURATION} s against ${URL[$t]}" \
    "(machine ${BUSY_BEFORE[$t]} % busy before; load average $(cut -d' ' -f1-3 /proc/loadavg))"
  "$PYTHON" "$BENCH_DIR/load_client.py" "${args[@]}" || die "$t: load_client.py failed (see above)"
  J="$BENCH_TMP/run-$t.json"; JSONS+=("$J"); BUSY_ARGS+=("$J=${BUSY_BEFORE[$t]}")
  # checks
  read -r errs lerrs retries sample < <("$PYTHON" -c 'import json,sys; r=json.load(open(sys.argv[1]))
print(r["errors"], r["login_errors"], r["retries"], json.dumps(r["error_samples"][:3]))' "$J")
  if [ "$errs" != 0 ] || [ "$lerrs" != 0 ]; then
    FAILS+=("$t: $errs errors in the pulls, $lerrs at login; first: $sample")
  fi
  [ "$retries" = 0 ] || NOTES+=("$t: $retries requests re-sent once on a new connection (the server had closed"\
" the reused one before answering; $(jfield "$J" retries_first_second) of them in the first second)")
  if [ "$t" = cache ]; then
    read -r hits misses fetches blobs < <("$PYTHON" -c 'import json,sys; r=json.load(open(sys.argv[1]))
print(r["cache"]["hits"], r["cache"]["misses"], r["cache"]["upstream_fetches"], r["totals"]["blob"])' "$J")
    [ "$misses" = 0 ] && [ "$fetches" = 0 ] || FAILS+=("cache: node misses/upstream fetches during the run +$misses/+$fetches, expected 0 (warm)")
    [ "$hits" = "$blobs" ] || FAILS+=("cache: node counted $hits hits, the clients got $blobs blobs from it")
    NOTES+=("cache: the node counted $hits hits and $misses misses for the $blobs blob GETs the clients made")
  fi
  if { [ "$t" = msr ] || [ "$t" = cache ]; } && [ -n "$AUDIT_DB" ]; then
    read -r rows manifests < <("$PYTHON" -c 'import json,sys; r=json.load(open(sys.argv[1]))
print(r["audit_pull_rows"], r["totals"]["manifest"])' "$J")
    if [ "$rows" = "$manifests" ]; then NOTES+=("$t: MSR wrote $rows pull audit rows for $manifests manifest GETs answered")
    else FAILS+=("$t: MSR wrote $rows pull audit rows for $manifests manifest GETs answered"); fi
  fi
done

# warnings and errors the servers logged during the whole run (MSR logs JSON lines).
# skopeo's push first tries TLS on the plain-HTTP port; gunicorn logs that ClientHello as
# "Invalid HTTP request line: 'bare LF as line terminator'": not counted.
for f in msr.log cache.log; do
  [ -s "$BENCH_TMP/$f" ] || continue
  grep -vF "bare LF as line terminator" "$BENCH_TMP/$f" >"$BENCH_TMP/$f.filtered" || true
  n=$(grep -cE '"level": "(WARNING|ERROR|CRITICAL)"|Traceback' "$BENCH_TMP/$f.filtered" || true)
  if [ "$n" = 0 ]; then NOTES+=("$f: no warning or error logged (besides skopeo's TLS probe at push time)")
  else
    NOTES+=("$f: $n warning/error lines, e.g. $(grep -E '"level": "(WARNING|ERROR|CRITICAL)"|Traceback' "$BENCH_TMP/$f.filtered" \
      | sed -n 's/.*"message": "\([^"]*\)".*/\1/p' | sort | uniq -c | sort -rn | head -3 | awk '{$1=$1; print}' | paste -sd ';' -)")
  fi
done

# -- report -----------------------------------------------------------------------------
REPORT="$BENCH_TMP/report.md"
{
  echo "## load: $CLIENTS concurrent clients pulling for ${DURATION} s (issue 7)"
  echo
  echo "Image: $IMG_DESC (random data, gzip level 0); $NBLOBS blob GETs per pull."
  echo "Clients: load_client.py, $PROCS processes (asyncio), one keep-alive connection per host per client,"
  echo "requests in order within a pull; MSR clients hold one bearer token each (fetched at start)."
  echo "Throughput counts what completed in the ${DURATION} s window; latency = request sent -> last byte."
  echo "Distribution and nginx run WITHOUT auth. Machine: $(host_summary); clients and servers share the cores."
  echo "Load average before the run: ${UPTIME_START##*load average: }."
  echo
  "$PYTHON" "$BENCH_DIR/load_client.py" report "${JSONS[@]}"
  echo
  "$PYTHON" - "${BUSY_ARGS[@]}" <<'EOF'
import json, sys
for arg in sys.argv[1:]:
    p, _, busy = arg.rpartition("=")
    r = json.load(open(p))
    la, lb = r["loadavg_start"], r["loadavg_end"]
    extra = f", login of all clients {r['login_s']:.1f} s" if r["auth"] else ""
    print(f"- {r['label']}: machine {busy} % busy in the 5 s before (our servers idle), "
          f"load average {la[0]:.2f} at t0, {lb[0]:.2f} at the end{extra}; "
          f"{r['totals']['pull']} pulls in all, last client done {r['ended_after_s']:.2f} s after the window; "
          f"outside our processes: kernel threads {r['kernel_threads_cpu_s']:.1f} CPU s, other processes "
          f"{r['other_procs_cpu_s']:.1f} CPU s ("
          + (", ".join(f"{c} {t:.1f}" for c, t in r["other_procs_top"]) or "none") + ")")
EOF
  for n in "${NOTES[@]}"; do echo "- $n"; done
  if [ "${#FAILS[@]}" = 0 ]; then
    echo "- Checks: 0 errors on every target (no non-2xx/307 answer, socket error, short body or wrong digest)."
  else
    for f in "${FAILS[@]}"; do echo "- **FAILED**: $f"; done
  fi
  echo
} >"$REPORT"
cat "$REPORT"
if [ "$SAVE" = 1 ]; then
  {
    echo "# MSR load benchmark, $TS"
    echo
    echo "- machine: $(host_summary)"
    echo "- uptime at start: $UPTIME_START"
    dirty=$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . \
      && echo ' + uncommitted changes' || true)
    echo "- tree: $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$dirty"
    echo "- msr: $MSR_BIN; tools: skopeo $(skopeo --version 2>/dev/null | awk '{print $3}')," \
      "docker-registry $(registry_version), python $("$PYTHON" -c 'import platform; print(platform.python_version())')"
    echo "- command: $0 $ORIG_ARGS"
    echo
    cat "$REPORT"
    echo "<details><summary>raw results (JSON per target, without latencies)</summary>"
    echo
    echo '```'
    for j in "${JSONS[@]}"; do cat "$j"; echo; done
    echo '```'
    echo "</details>"
  } >"$RES"
  log "results: $RES"
fi
[ "${#FAILS[@]}" = 0 ] || die "${#FAILS[@]} check(s) failed (see the report)"
