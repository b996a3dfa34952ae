# Shared helpers for MSR's benchmark scripts. Source it: . "$(dirname "$0")/lib.sh"
#
# Everything started here binds to 127.0.0.1 on a free port, lives in one scratch dir
# from mktemp, is recorded by PID and stopped by PID in bench_cleanup (install it with
# `trap bench_cleanup EXIT`). Adapted from the team's shared bench/lib.sh, plus helpers
# to start MSR (`msr serve`, fresh data dir), get registry tokens from it and sample the
# resident memory of a server's process tree.

export LC_ALL=C   # '.' as decimal point for awk/printf/sort, whatever the user's locale

BENCH_DIR=${BENCH_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
REGISTRY_BIN=${REGISTRY_BIN:-docker-registry}
NGINX_BIN=${NGINX_BIN:-nginx}
PYTHON=${PYTHON:-python3}
# The msr command: the checkout's virtualenv if there is one, else `msr` on PATH
if [ -z "${MSR_BIN:-}" ]; then
  if [ -x "$REPO_ROOT/.venv/bin/msr" ]; then MSR_BIN="$REPO_ROOT/.venv/bin/msr"
  else MSR_BIN=$(command -v msr || true); fi
fi
MSR_URL_ARG=""; MSR_CREDS_ARG=${MSR_BENCH_CREDS:-}; MSR_PID_ARG=""
MSR_WORKERS=""; MSR_THREADS=""; MSR_DB=sqlite
PG_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}

BENCH_PIDS=()        # plain processes (docker-registry, nginx, samplers): TERM, then KILL
BENCH_TMP=""
MSR_PID=""; MSR_OWNED=0; MSR_URL=""; MSR_HOSTPORT=""; MSR_CREDS=""; MSR_USER=""
MSR_PG_DB=""         # scratch PostgreSQL database to drop at exit
BENCH_PG_DBS=()      # more of them (pg_scratch_db), dropped at exit too
declare -A RSS_PIDS=()

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

COMMON_HELP='Common options (all scripts):
  --msr-bin PATH       msr command (default: <repo>/.venv/bin/msr, else msr on PATH)
  --msr-url URL        use a running MSR (http://host:port) instead of starting one;
                       needs --msr-creds USER:PASS (pushes go to USER/<repo>)
  --msr-creds U:P      credentials for --msr-url (or env MSR_BENCH_CREDS)
  --msr-pid PID        with --msr-url: gunicorn master PID, to sample its RSS
  --msr-workers N      --workers for the MSR started here (default: msr'"'"'s own, 2)
  --msr-threads N      --threads for the MSR started here (default: msr'"'"'s own, 8)
  --db sqlite|postgres database of the MSR started here (default sqlite; postgres uses a
                       scratch database created in --pg-url and dropped at exit)
  --pg-url URL         PostgreSQL server (default postgres://postgres@127.0.0.1:5432)
  --registry-bin PATH  CNCF Distribution binary (default docker-registry)
  --nginx-bin PATH     nginx binary (default nginx)
  --keep               keep the scratch dir (also KEEP_TMP=1)
Env: BENCH_TMPDIR (where the scratch dir goes; default $TMPDIR or /tmp).'

usage() {  # the calling script's leading comment block, then the common options
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  echo
  echo "$COMMON_HELP"
}

# common_opt "$@": consumes one common option; sets COMMON_SHIFT; returns 1 if unknown
common_opt() {
  COMMON_SHIFT=2
  case $1 in
    --msr-bin) MSR_BIN=${2:-};;
    --msr-url) MSR_URL_ARG=${2:-};;
    --msr-creds) MSR_CREDS_ARG=${2:-};;
    --msr-pid) MSR_PID_ARG=${2:-};;
    --msr-workers) MSR_WORKERS=${2:-};;
    --msr-threads) MSR_THREADS=${2:-};;
    --db) MSR_DB=${2:-};;
    --pg-url) PG_URL=${2:-};;
    --registry-bin) REGISTRY_BIN=${2:-};;
    --nginx-bin) NGINX_BIN=${2:-};;
    --keep) KEEP_TMP=1; COMMON_SHIFT=1;;
    *) return 1;;
  esac
  [ "$COMMON_SHIFT" -le $# ] || die "$1 needs a value"
  case $MSR_DB in sqlite|postgres) ;; *) die "--db must be sqlite or postgres";; esac
}

need() {  # need CMD... : fail early with an install hint
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "$c not found (Debian: apt-get install -y $(case $c in
      docker-registry) echo docker-registry;; wrk) echo wrk;; skopeo) echo skopeo;; nginx) echo nginx;;
      psql) echo postgresql-client;; *) echo "$c";; esac))"
  done
}

bench_mktemp() {
  if [ -n "${BENCH_TMPDIR:-}" ]; then
    BENCH_TMP=$(mktemp -d --tmpdir="$BENCH_TMPDIR" msr-bench.XXXXXX)
  else
    BENCH_TMP=$(mktemp -d -t msr-bench.XXXXXX)
  fi
  chmod 755 "$BENCH_TMP"   # nginx workers (non-root) must read files in it
}

stop_pid() {  # stop_pid PID [seconds]: TERM, wait, then KILL
  local pid=$1 t=${2:-5} i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq $((t * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

proc_children() {  # direct children of PID (all threads)
  cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+$' || true
}
stop_gunicorn() {  # stop_gunicorn PID: graceful TERM to a gunicorn master, KILL after 40 s
  local pid=$1 kids k i
  [ -n "$pid" ] || return 0
  kids=$(proc_children "$pid")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for k in $kids; do   # workers orphaned by a killed master (checked to be ours)
    if grep -q gunicorn "/proc/$k/cmdline" 2>/dev/null; then kill -9 "$k" 2>/dev/null || true; fi
  done
}

stop_msr() {
  [ -n "$MSR_PID" ] && [ "$MSR_OWNED" = 1 ] || return 0
  local kids k i
  kids=$(proc_children "$MSR_PID")
  kill -TERM "$MSR_PID" 2>/dev/null || true   # gunicorn master: graceful stop of the workers
  for i in $(seq 400); do kill -0 "$MSR_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$MSR_PID" 2>/dev/null; then
    log "MSR (pid $MSR_PID) still running 40 s after SIGTERM: SIGKILL"
    kill -9 "$MSR_PID" 2>/dev/null || true
  fi
  wait "$MSR_PID" 2>/dev/null || true
  for k in $kids; do   # workers orphaned by a killed master (checked to be ours)
    if grep -q gunicorn "/proc/$k/cmdline" 2>/dev/null; then kill -9 "$k" 2>/dev/null || true; fi
  done
  MSR_PID=""
}

bench_cleanup() {
  local pid
  # samplers first (they must not outlive the run), then MSR (graceful), then the rest
  for pid in "${RSS_PIDS[@]}"; do stop_pid "$pid" 2; done
  stop_msr
  for pid in "${BENCH_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${BENCH_PIDS[@]}"; do stop_pid "$pid" 5; done
  BENCH_PIDS=()
  local db
  for db in "${BENCH_PG_DBS[@]}"; do   # scratch databases from pg_scratch_db
    psql "$PG_URL/postgres" -qX -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 \
      || log "could not drop scratch database $db"
  done
  BENCH_PG_DBS=()
  if [ -n "$MSR_PG_DB" ]; then
    psql "$PG_URL/postgres" -qX -c "DROP DATABASE IF EXISTS $MSR_PG_DB WITH (FORCE)" >/dev/null 2>&1 \
      || log "could not drop scratch database $MSR_PG_DB"
    MSR_PG_DB=""
  fi
  if [ -n "$BENCH_TMP" ]; then
    if [ -n "${KEEP_TMP:-}" ]; then log "scratch dir kept: $BENCH_TMP"; else rm -rf "$BENCH_TMP"; fi
  fi
}

free_port() {
  "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_http() {  # wait_http URL [timeout_s] [pid] [logfile]: any HTTP answer will do
  local url=$1 t=${2:-20} pid=${3:-} logf=${4:-} i
  for i in $(seq $((t * 10))); do
    curl -s -o /dev/null --max-time 1 "$url" && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      [ -n "$logf" ] && tail -n 30 "$logf" >&2
      die "process $pid exited before $url answered"
    fi
    sleep 0.1
  done
  [ -n "$logf" ] && tail -n 30 "$logf" >&2
  die "timed out waiting for $url"
}

registry_version() { "$REGISTRY_BIN" --version 2>/dev/null | awk '{print $3}'; }

# start_registry PORT ROOTDIR -> sets REGISTRY_PID, REGISTRY_HOSTPORT (no auth, filesystem)
start_registry() {
  local port=$1 root=$2
  mkdir -p "$root"
  local cfg="$root.yml"
  cat >"$cfg" <<EOF
version: 0.1
log:
  level: ${REGISTRY_LOG_LEVEL:-warn}
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $root
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
EOF
  "$REGISTRY_BIN" serve "$cfg" >"$root.log" 2>&1 &
  REGISTRY_PID=$!
  REGISTRY_HOSTPORT=127.0.0.1:$port
  BENCH_PIDS+=("$REGISTRY_PID")
  wait_http "http://127.0.0.1:$port/v2/" 20 "$REGISTRY_PID" "$root.log"
}

# start_nginx PORT DOCROOT -> sets NGINX_PID (serves DOCROOT statically, sendfile on)
start_nginx() {
  local port=$1 root=$2
  local pfx="$BENCH_TMP/nginx"
  mkdir -p "$pfx/logs" "$pfx/tmp"
  cat >"$pfx/nginx.conf" <<EOF
worker_processes ${NGINX_WORKERS:-auto};
pid $pfx/nginx.pid;
error_log $pfx/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path $pfx/tmp/body;
  proxy_temp_path $pfx/tmp/proxy;
  fastcgi_temp_path $pfx/tmp/fastcgi;
  uwsgi_temp_path $pfx/tmp/uwsgi;
  scgi_temp_path $pfx/tmp/scgi;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$port;
    root $root;
  }
}
EOF
  "$NGINX_BIN" -p "$pfx" -c "$pfx/nginx.conf" -g 'daemon off;' >"$pfx/logs/stdout.log" 2>&1 &
  NGINX_PID=$!
  BENCH_PIDS+=("$NGINX_PID")
  wait_http "http://127.0.0.1:$port/" 20 "$NGINX_PID" "$pfx/logs/error.log"
}

# rnd -> 24 random hex characters (passwords, names)
rnd() { "$PYTHON" -c 'import secrets; print(secrets.token_hex(12))'; }

# api METHOD PATH [JSON] -> body of /api/v0/PATH as $MSR_CREDS (fails on HTTP >= 400)
api() {
  local data=() out code
  [ $# -lt 3 ] || data=(--data "$3")
  out=$(curl -sS -u "$MSR_CREDS" -X "$1" -H 'Content-Type: application/json' "${data[@]}" \
        -w '\n%{http_code}' "$MSR_URL/api/v0/$2") || die "API $1 /api/v0/$2: curl failed"
  code=${out##*$'\n'}; out=${out%$'\n'*}
  [ "$code" -lt 400 ] || die "API $1 /api/v0/$2 ${3:-} -> HTTP $code: $out"
  printf '%s\n' "$out"
}

# setup_msr: start a fresh MSR (or adopt --msr-url). Sets MSR_URL (http://h:p),
# MSR_HOSTPORT, MSR_CREDS (user:pass), MSR_USER (push namespace), MSR_PID (may be empty
# for --msr-url without --msr-pid), MSR_LABEL (for tables).
setup_msr() {
  if [ -n "$MSR_URL_ARG" ]; then
    [ -n "$MSR_CREDS_ARG" ] || die "--msr-url needs --msr-creds USER:PASS"
    MSR_URL=${MSR_URL_ARG%/}
    case $MSR_URL in http://*|https://*) ;; *) MSR_URL="http://$MSR_URL";; esac
    MSR_HOSTPORT=${MSR_URL#*://}
    MSR_CREDS=$MSR_CREDS_ARG; MSR_USER=${MSR_CREDS%%:*}
    MSR_PID=$MSR_PID_ARG; MSR_OWNED=0
    MSR_LABEL="MSR ($MSR_URL)"
    curl -s -o /dev/null --max-time 5 "$MSR_URL/v2/" || die "no answer from $MSR_URL/v2/"
    return 0
  fi
  [ -n "$MSR_BIN" ] || die "no msr command: pass --msr-bin, or pip install -e '$REPO_ROOT[test]' into $REPO_ROOT/.venv"
  command -v "$MSR_BIN" >/dev/null 2>&1 || die "msr command not found: $MSR_BIN"
  local port pw data envargs=() opts=()
  port=$(free_port)
  pw="bench-$("$PYTHON" -c 'import secrets; print(secrets.token_hex(12))')"
  data="$BENCH_TMP/msr-data"
  # Only what this script chooses reaches MSR: no inherited DATABASE_URL, storage dir,
  # keys or *_FILE settings that could point outside the scratch dir. Worker count,
  # threads, fsync and log level may come from the environment (reported in the label).
  msr_env_unset; envargs=("${MSR_ENV_UNSET[@]}")
  local dbdesc=sqlite
  if [ "$MSR_DB" = postgres ]; then
    need psql
    MSR_PG_DB="msr_bench_$$_${RANDOM}"
    psql "$PG_URL/postgres" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $MSR_PG_DB" >/dev/null \
      || { MSR_PG_DB=""; die "could not create a database in $PG_URL (see --pg-url)"; }
    envargs+=("DATABASE_URL=$PG_URL/$MSR_PG_DB")
    dbdesc=postgres
  fi
  # cache nodes (load.sh) run on loopback, which the egress policy opens only when told to
  envargs+=("MSR_DATA_DIR=$data" "MSR_ADMIN_PASSWORD=$pw" "MSR_OUTBOUND_ALLOW=127.0.0.1/32")
  # a script's own settings for this MSR (MSR_SETUP_ENV=(NAME=VALUE ...), e.g. region.sh's grant TTL)
  envargs+=(${MSR_SETUP_ENV[@]+"${MSR_SETUP_ENV[@]}"})
  [ -n "$MSR_WORKERS" ] && opts+=(--workers "$MSR_WORKERS")
  [ -n "$MSR_THREADS" ] && opts+=(--threads "$MSR_THREADS")
  # The web process alone (`msr serve`), as in production: `msr up` would add a worker
  # and a supervisor to the process tree whose memory is measured.
  # In the scratch dir: with the filesystem broker, Kombu writes a control/ folder into the
  # working directory of whoever publishes tasks.
  (cd "$BENCH_TMP" && env "${envargs[@]}" "$MSR_BIN" manage migrate -v 0) >"$BENCH_TMP/msr.log" 2>&1 \
    || die "msr manage migrate failed (see $BENCH_TMP/msr.log)"
  (cd "$BENCH_TMP" && env "${envargs[@]}" "$MSR_BIN" manage adduser admin --admin --password "$pw") \
    >>"$BENCH_TMP/msr.log" 2>&1 || die "msr manage adduser failed (see $BENCH_TMP/msr.log)"
  (cd "$BENCH_TMP" && exec env "${envargs[@]}" "$MSR_BIN" serve --bind "127.0.0.1:$port" "${opts[@]}") \
    >>"$BENCH_TMP/msr.log" 2>&1 &
  MSR_PID=$!; MSR_OWNED=1
  MSR_URL="http://127.0.0.1:$port"; MSR_HOSTPORT="127.0.0.1:$port"
  MSR_CREDS="admin:$pw"; MSR_USER=admin
  wait_http "$MSR_URL/v2/" 120 "$MSR_PID" "$BENCH_TMP/msr.log"
  local w=${MSR_WORKERS:-${MSR_WEB_WORKERS:-2}} t=${MSR_THREADS:-${MSR_WEB_THREADS:-8}}
  MSR_LABEL="MSR ($w workers x $t threads, $dbdesc${MSR_STORAGE_FSYNC:+, MSR_STORAGE_FSYNC=$MSR_STORAGE_FSYNC})"
  log "MSR up at $MSR_URL (pid $MSR_PID, $dbdesc, log $BENCH_TMP/msr.log)"
}

# msr_token SCOPE -> prints a bearer token for SCOPE (e.g. repository:admin/x:pull),
# using the realm and service of MSR's WWW-Authenticate challenge.
MSR_REALM=""; MSR_SERVICE=""
msr_token() {
  if [ -z "$MSR_REALM" ]; then
    local hdr
    hdr=$(curl -s -D - -o /dev/null "$MSR_URL/v2/" | tr -d '\r' | grep -i '^www-authenticate:' || true)
    MSR_REALM=$(sed -n 's/.*realm="\([^"]*\)".*/\1/p' <<<"$hdr")
    MSR_SERVICE=$(sed -n 's/.*service="\([^"]*\)".*/\1/p' <<<"$hdr")
    [ -n "$MSR_REALM" ] || MSR_REALM="$MSR_URL/auth/token"
    [ -n "$MSR_SERVICE" ] || MSR_SERVICE=msr
  fi
  local out
  out=$(curl -s -u "$MSR_CREDS" -G --data-urlencode "service=$MSR_SERVICE" \
        --data-urlencode "scope=$1" "$MSR_REALM") || die "token request to $MSR_REALM failed"
  "$PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])["token"])' "$out" 2>/dev/null \
    || die "no token from $MSR_REALM for $1: $out"
}

# RSS of a process tree, sampled in the background: start_rss NAME PID / stop_rss NAME
# -> JSON in $BENCH_TMP/rss-NAME.json (see rss_sampler.py)
start_rss() {
  "$PYTHON" "$BENCH_DIR/rss_sampler.py" --pid "$2" --interval "${RSS_INTERVAL:-0.05}" \
    --out "$BENCH_TMP/rss-$1.json" &
  RSS_PIDS[$1]=$!
}
stop_rss() {
  local pid=${RSS_PIDS[$1]:-}
  [ -n "$pid" ] || return 0
  stop_pid "$pid" 5
  unset "RSS_PIDS[$1]"
  [ -s "$BENCH_TMP/rss-$1.json" ] || die "RSS sampler $1 wrote no result"
}
rss_field() {  # rss_field NAME FIELD -> value (MiB for *_kb fields), or n/a
  local f="$BENCH_TMP/rss-$1.json"
  [ -s "$f" ] || { echo n/a; return; }
  "$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); v=d[sys.argv[2]]
print("%.0f" % (v/1024) if sys.argv[2].endswith("_kb") else v)' "$f" "$2"
}

# mkimage_layout NAME mkimage-args... -> OCI layout $BENCH_TMP/img-NAME (tag v1, gzip layers at
# ${GZIP_LEVEL:-0}), mkimage.py's JSON in img-NAME.json, "hex size" per layer in img-NAME.layers
mkimage_layout() {
  local name=$1; shift
  rm -rf "$BENCH_TMP/img-$name"
  "$PYTHON" "$BENCH_DIR/mkimage.py" "$@" --compression gzip --gzip-level "${GZIP_LEVEL:-0}" \
    --out "$BENCH_TMP/img-$name" --tag v1 >"$BENCH_TMP/img-$name.json" 2>/dev/null \
    || die "mkimage.py failed for $name"
  "$PYTHON" -c 'import json,sys
d=json.load(open(sys.argv[1]))
for l in d["layers"]: print(l["digest"].split(":",1)[1], l["size"])' "$BENCH_TMP/img-$name.json" \
    >"$BENCH_TMP/img-$name.layers"
}

median() {  # median of numbers on stdin
  sort -g | awk '{a[NR]=$1} END{ if(NR==0){print "nan"; exit} if(NR%2){print a[(NR+1)/2]} else {printf "%.6g\n", (a[NR/2]+a[NR/2+1])/2} }'
}

ratio() {  # ratio A B -> "1.23x" (n/a if either is missing or B is 0)
  awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="" || b=="" || a=="n/a" || b=="n/a" || b+0==0) print "n/a"; else printf "%.2fx\n", a/b }'
}

host_summary() {  # one line about the machine, for result headers
  echo "$(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), $(uname -sr)"
}

# -- helpers for scripts that start several MSRs themselves (s3.sh) -----------------------

# msr_env_unset -> MSR_ENV_UNSET: `env` arguments removing every MSR_* / DATABASE_URL*
# variable except MSR_WEB_WORKERS, MSR_WEB_THREADS, MSR_STORAGE_FSYNC, MSR_LOG_LEVEL
# (setup_msr's and geo.sh's rule too)
msr_env_unset() {
  local v
  MSR_ENV_UNSET=()
  for v in $(compgen -e); do
    case $v in
      MSR_WEB_WORKERS|MSR_WEB_THREADS|MSR_STORAGE_FSYNC|MSR_LOG_LEVEL) ;;
      MSR_*|DATABASE_URL*) MSR_ENV_UNSET+=(-u "$v");;
    esac
  done
}

# pg_scratch_db -> PG_SCRATCH_URL: a new database in $PG_URL, dropped in bench_cleanup
pg_scratch_db() {
  need psql
  local db="msr_bench_$$_${RANDOM}${RANDOM}"
  psql "$PG_URL/postgres" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db" >/dev/null \
    || die "could not create a database in $PG_URL (see --pg-url)"
  BENCH_PG_DBS+=("$db")
  PG_SCRATCH_URL="$PG_URL/$db"
}

# start_moto DIR -> MOTO_PID, MOTO_URL: moto's standalone S3 emulator (moto_server, from
# <checkout>/.venv/bin, else next to the msr command, else PATH; or $MOTO_BIN) on a free
# port of 127.0.0.1, running in DIR with TMPDIR=DIR/tmp (moto spills objects over ~5 MiB
# to temporary files), stopped by PID in bench_cleanup. It checks no credentials.
MOTO_BIN=${MOTO_BIN:-}
start_moto() {
  local dir=$1 port
  if [ -z "$MOTO_BIN" ]; then
    if [ -x "$REPO_ROOT/.venv/bin/moto_server" ]; then MOTO_BIN="$REPO_ROOT/.venv/bin/moto_server"
    elif [ -n "$MSR_BIN" ] && [ -x "$(dirname "$(command -v "$MSR_BIN")")/moto_server" ]; then
      MOTO_BIN="$(dirname "$(command -v "$MSR_BIN")")/moto_server"
    else MOTO_BIN=$(command -v moto_server || true); fi
  fi
  [ -n "$MOTO_BIN" ] && [ -x "$MOTO_BIN" ] \
    || die "moto_server not found: pip install 'moto[server]' into $REPO_ROOT/.venv (or MOTO_BIN=PATH)"
  mkdir -p "$dir/tmp"
  port=$(free_port)
  (cd "$dir" && exec env TMPDIR="$dir/tmp" "$MOTO_BIN" -H 127.0.0.1 -p "$port") >"$dir/moto.log" 2>&1 &
  MOTO_PID=$!
  MOTO_URL="http://127.0.0.1:$port"
  BENCH_PIDS+=("$MOTO_PID")
  wait_http "$MOTO_URL/" 60 "$MOTO_PID" "$dir/moto.log"
}
s3_create_bucket() {  # s3_create_bucket ENDPOINT BUCKET: unsigned PUT (for moto, which checks no signature)
  local code
  code=$(curl -s -o "$BENCH_TMP/bucket.out" -w '%{http_code}' -X PUT "$1/$2") || code=000
  [ "$code" = 200 ] || die "creating bucket $2 at $1: HTTP $code $(cat "$BENCH_TMP/bucket.out" 2>/dev/null)"
}
forget_pid() {  # forget_pid PID: drop from BENCH_PIDS (after stopping it: its PID may be reused)
  local p keep=()
  for p in "${BENCH_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  BENCH_PIDS=("${keep[@]}")
}

tree_cpu() {  # tree_cpu PID... -> CPU seconds (user + system, waited-for children included) of the trees
  "$PYTHON" "$BENCH_DIR/proctree.py" cpu "$@"
}
tree_rss() {  # tree_rss PID -> "sum_kb max_kb" of VmRSS over the process tree
  "$PYTHON" "$BENCH_DIR/proctree.py" rss "$1"
}
children_cpu() {  # children_cpu VAR: user + sys seconds of this shell's finished children
  # `times` must run in this shell (a subshell starts its children's counters at 0); its
  # second line is the children's "XmY.YYYs XmY.YYYs"
  times >"$BENCH_TMP/times.out"
  printf -v "$1" '%s' "$(tail -n 1 "$BENCH_TMP/times.out" | awk '{ n = 0
    for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); n += a[1] * 60 + a[2] }
    printf "%.2f\n", n }')"
}
machine_busy_cpu() {  # CPU seconds the whole machine has been busy since boot (all cores)
  awk -v t="$(getconf CLK_TCK)" '/^cpu /{ printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / t; exit }' /proc/stat
}
