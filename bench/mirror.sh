#!/usr/bin/env bash
# Push mirroring and promotion (issue: "push-mirror a 1 GiB, 10-layer image between two
# deployments, side by side with `skopeo copy` between the same two in the same run;
# promotion time of a 1 GiB image, under 100 ms and independent of size; the mirror
# within 1.1x of `skopeo copy`").
#
# Two MSR deployments are started in the scratch dir, each with its own data dir and
# SQLite database: A (`msr serve` + `msr worker --beat`, Celery on --redis-url, whose
# database is FLUSHED at start and at exit) and B (`msr serve`). Each gets an admin with a
# random password, a personal access token (`msr manage addtoken`) and the organization
# `bench`. Every call below uses the tokens; nothing pays for a password hash.
#
# Each of --rounds rounds (default 3) makes two new images with mkimage.py (new seeds,
# --layers layers adding up to --size-mb MiB, gzip level 0) and pushes both to A with
# skopeo, into new repositories. Then, in alternating order:
#   mirror  a push mirroring policy on A (POST .../pushMirroringPolicies: remoteHost = B,
#           username admin + B's token, rule tag == v1) and POST /api/v0/jobs
#           {"action":"push_mirror","policy":id,"tag":"v1"}; timed from the POST until
#           GET /api/v0/jobs/<id> (polled every --poll s) says done. Also reported:
#           POST -> the job's finishedAt, and the job's own startedAt -> finishedAt.
#   skopeo  skopeo copy docker://A/bench/<repo>:v1 docker://B/bench/<repo>:v1 (tokens
#           as credentials), wall time.
# Neither copy can profit from the other: different images (no blob of one is in B
# before its copy), new repositories on B, and skopeo's output is checked for reused
# ("skipped: already exists") blobs. `sync` before each. Checks that fail the run: the job
# is done with bytesDone == bytesTotal == the image's blob bytes, and B's tag v1 has A's
# manifest digest, for both copies. Figures: medians; ratio mirror / skopeo.
# CPU seconds used by A's and B's process trees (and by skopeo) during each copy are read
# from /proc and reported, to show where the time goes.
#
# Promotion: --promote-runs runs (default 5) for the first round's 1 GiB image and for a
# tiny image (one --tiny-kb KiB layer), alternating. Each run creates a promotion policy
# on the image's repository into a NEW target repository (tagTemplate "%n-prod"), so each
# run links every blob and copies the manifest row, then POST /api/v0/jobs
# {"action":"promote",...}, polled every --promote-poll s. Judged on the job's own
# startedAt -> finishedAt; end to end (POST -> finishedAt, which includes the API call
# and the Celery queue) shown beside it. Checked: done, no bytes copied, the job's result,
# and the target's tag v1-prod resolves to the source's digest.
#
# Usage: ./mirror.sh [--size-mb 1024] [--layers 10] [--rounds 3] [--promote-runs 5]
#          [--tiny-kb 4] [--redis-url redis://127.0.0.1:6379/9] [--poll 0.1]
#          [--promote-poll 0.05] [--worker-concurrency 2] [--gzip-level 0]
#          [--no-mirror | --no-promote] [--out DIR | --no-save] [common options, see below]
#   --out DIR   results go to DIR/<UTC time>-mirror.md (+ .log); default bench/results
# Environment passed to A's and B's msr processes (shown in the results): MSR_WEB_WORKERS,
# MSR_WEB_THREADS, MSR_STORAGE_FSYNC, MSR_LOG_LEVEL, MSR_MIRROR_PARALLEL_BLOBS,
# MSR_MIRROR_CHUNK_BYTES, MSR_MIRROR_HEARTBEAT_SECONDS, MSR_MIRROR_TICK_SECONDS,
# MSR_WORKER_POOL; any other MSR_* or DATABASE_URL* variable is removed.
# Defaults: about 3-5 minutes on 2 cores; 4 GiB of registry storage per round (2 GiB in A,
# 2 GiB in B) stays in the scratch dir until the end. Smoke test (~1 min):
#   ./mirror.sh --size-mb 40 --layers 4 --rounds 1 --promote-runs 2 --no-save
# Needs: bash, python3, curl, skopeo, redis-cli and a Redis server, msr (--msr-url and
# --db postgres are not supported: both deployments are started here).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

ORIG_ARGS="$*"
SIZE_MB=1024; LAYERS=10; ROUNDS=3; PROMOTE_RUNS=5; TINY_KB=4; GZIP_LEVEL=0
REDIS_URL=redis://127.0.0.1:6379/9; POLL=0.1; PROMOTE_POLL=0.05; WORKER_CONC=2
DO_MIRROR=1; DO_PROMOTE=1; OUT="$BENCH_DIR/results"; SAVE=1
while [ $# -gt 0 ]; do
  case $1 in
    --size-mb) SIZE_MB=$2; shift 2;;
    --layers) LAYERS=$2; shift 2;;
    --rounds) ROUNDS=$2; shift 2;;
    --promote-runs) PROMOTE_RUNS=$2; shift 2;;
    --tiny-kb) TINY_KB=$2; shift 2;;
    --redis-url) REDIS_URL=$2; shift 2;;
    --poll) POLL=$2; shift 2;;
    --promote-poll) PROMOTE_POLL=$2; shift 2;;
    --worker-concurrency) WORKER_CONC=$2; shift 2;;
    --gzip-level) GZIP_LEVEL=$2; shift 2;;
    --no-mirror) DO_MIRROR=0; shift;;
    --no-promote) DO_PROMOTE=0; shift;;
    --out) OUT=$2; shift 2;;
    --no-save) SAVE=0; shift;;
    -h|--help) usage; exit 0;;
    *) common_opt "$@" || die "unknown argument $1 (see --help)"; shift "$COMMON_SHIFT";;
  esac
done
for v in LAYERS ROUNDS PROMOTE_RUNS WORKER_CONC GZIP_LEVEL; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v: ${!v} is not a whole number"
done
[ "$LAYERS" -ge 1 ] && [ "$ROUNDS" -ge 1 ] && [ "$PROMOTE_RUNS" -ge 1 ] && [ "$WORKER_CONC" -ge 1 ] \
  || die "--layers, --rounds, --promote-runs and --worker-concurrency must be at least 1"
for v in SIZE_MB TINY_KB POLL PROMOTE_POLL; do
  [[ ${!v} =~ ^[0-9]+([.][0-9]+)?$ ]] || die "bad value ${!v} for $v"
done
[[ $REDIS_URL =~ ^rediss?://[^/]+/[0-9]+$ ]] || die "--redis-url: redis://host:port/<db number>"
[ "$DO_MIRROR" = 1 ] || [ "$DO_PROMOTE" = 1 ] || die "--no-mirror and --no-promote: nothing to do"
[ -z "$MSR_URL_ARG" ] || die "mirror.sh starts its own two deployments; --msr-url is not supported"
[ "$MSR_DB" = sqlite ] || die "mirror.sh runs both deployments on SQLite only"
[ -n "$MSR_BIN" ] && command -v "$MSR_BIN" >/dev/null 2>&1 || die "msr command not found (--msr-bin)"
need "$PYTHON" curl skopeo redis-cli sync
redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG || die "no Redis answering at $REDIS_URL (--redis-url)"

TS=$(date -u +%Y%m%dT%H%M%SZ)
if [ "$SAVE" = 1 ]; then
  mkdir -p "$OUT"
  RES="$OUT/$TS-mirror.md"; LOGF="$OUT/$TS-mirror.log"
  exec 2> >(tee -a "$LOGF" >&2)
fi

# -- processes ------------------------------------------------------------------------
declare -A URL=() HOSTPORT=() PW=() TOKEN=() WEB_PID=()
WORKER_PID=""
REDIS_FLUSHED=0
stop_worker() {  # Celery: TERM = warm shutdown of the main process and its pool; KILL after 30 s
  local pid=$1 kids k i
  [ -n "$pid" ] || return 0
  kids=$(proc_children "$pid")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for k in $kids; do
    if grep -q celery "/proc/$k/cmdline" 2>/dev/null; then kill -9 "$k" 2>/dev/null || true; fi
  done
}
mirror_cleanup() {
  local rc=$? f d
  if [ "$rc" != 0 ] && [ -n "$BENCH_TMP" ]; then
    for f in A/web.log A/worker.log B/web.log; do
      [ -s "$BENCH_TMP/$f" ] || continue
      echo "--- last lines of $f:" >&2; tail -n 20 "$BENCH_TMP/$f" >&2
    done
  fi
  stop_worker "$WORKER_PID"; WORKER_PID=""
  for d in A B; do stop_gunicorn "${WEB_PID[$d]:-}"; WEB_PID[$d]=""; done
  [ "$REDIS_FLUSHED" = 0 ] || redis-cli -u "$REDIS_URL" flushdb >/dev/null 2>&1 || true
  bench_cleanup
}
bench_mktemp
trap mirror_cleanup EXIT
trap 'exit 130' INT TERM

fmt2() { awk -v v="$1" 'BEGIN{ if (v=="" || v=="n/a" || v=="nan") print "n/a"; else printf "%.2f\n", v }'; }
fmt0() { awk -v v="$1" 'BEGIN{ if (v=="" || v=="n/a" || v=="nan") print "n/a"; else printf "%.0f\n", v }'; }
ms() { awk -v v="$1" 'BEGIN{ if (v=="" || v=="n/a" || v=="nan") print "n/a"; else printf "%.0f\n", v * 1000 }'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{ printf "%.3f\n", b - a }'; }

# What reaches the msr processes: only what this script chooses (see the header).
KEPT_ENV="MSR_WEB_WORKERS MSR_WEB_THREADS MSR_STORAGE_FSYNC MSR_LOG_LEVEL MSR_MIRROR_PARALLEL_BLOBS
MSR_MIRROR_CHUNK_BYTES MSR_MIRROR_HEARTBEAT_SECONDS MSR_MIRROR_TICK_SECONDS MSR_WORKER_POOL"
msr_env() {  # msr_env NAME -> MSR_ENV (env arguments for deployment NAME's msr commands)
  local v
  MSR_ENV=()
  for v in $(compgen -e); do
    case " $(echo $KEPT_ENV) " in *" $v "*) continue;; esac
    case $v in MSR_*|DATABASE_URL*) MSR_ENV+=(-u "$v");; esac
  done
  # the two deployments mirror on loopback, which the egress policy opens only when told to
  MSR_ENV+=("MSR_DATA_DIR=$BENCH_TMP/$1/data" "MSR_ADMIN_PASSWORD=${PW[$1]}" "MSR_OUTBOUND_ALLOW=127.0.0.1/32")
  [ -z "$EXTRA_PYTHONPATH" ] || MSR_ENV+=("PYTHONPATH=$EXTRA_PYTHONPATH${PYTHONPATH:+:$PYTHONPATH}")
  # A's jobs go through Redis; B queues nothing (no policies, no webhooks): the default
  # filesystem broker in its own data dir.
  [ "$1" != A ] || MSR_ENV+=("MSR_BROKER_URL=$REDIS_URL")
}
# An msr installed before pyproject.toml listed the `mirroring` package (fixed in 526247f;
# an editable install maps packages when it is installed) cannot import it outside the
# checkout. Then the checkout goes on PYTHONPATH (the processes still run in the scratch dir).
MSR_PY=$(head -n 1 "$(command -v "$MSR_BIN")" | sed -n 's/^#! *//p' | awk '{print $1}')
[ -n "$MSR_PY" ] && [ -x "$MSR_PY" ] || MSR_PY=$PYTHON
EXTRA_PYTHONPATH=""
if ! (cd / && env -u PYTHONPATH "$MSR_PY" -c 'import mirroring' >/dev/null 2>&1); then
  [ -f "$REPO_ROOT/mirroring/__init__.py" ] || die "$MSR_BIN cannot import the mirroring app"
  EXTRA_PYTHONPATH=$REPO_ROOT
fi
ENV_SHOWN=""
for v in $KEPT_ENV; do [ -z "${!v:-}" ] || ENV_SHOWN+="${ENV_SHOWN:+, }$v=${!v}"; done

# start_deployment NAME: migrate, admin + token + organization bench, msr serve
start_deployment() {
  local d=$1 port opts=()
  mkdir -p "$BENCH_TMP/$d"
  PW[$d]="bench-$(rnd)"
  msr_env "$d"
  port=$(free_port)
  [ -z "$MSR_WORKERS" ] || opts+=(--workers "$MSR_WORKERS")
  [ -z "$MSR_THREADS" ] || opts+=(--threads "$MSR_THREADS")
  # every msr process runs in the scratch dir (nothing it writes lands in the checkout)
  (cd "$BENCH_TMP/$d" && env "${MSR_ENV[@]}" "$MSR_BIN" manage migrate -v 0) >"$BENCH_TMP/$d/web.log" 2>&1 \
    || die "$d: msr manage migrate failed (see $BENCH_TMP/$d/web.log)"
  (cd "$BENCH_TMP/$d" && env "${MSR_ENV[@]}" "$MSR_BIN" manage adduser admin --admin --password "${PW[$d]}") \
    >>"$BENCH_TMP/$d/web.log" 2>&1 || die "$d: msr manage adduser failed"
  TOKEN[$d]=$(cd "$BENCH_TMP/$d" && env "${MSR_ENV[@]}" "$MSR_BIN" manage addtoken admin --name bench \
    2>>"$BENCH_TMP/$d/web.log" | tail -n 1) || die "$d: msr manage addtoken failed"
  [ -n "${TOKEN[$d]}" ] || die "$d: msr manage addtoken printed no token"
  (cd "$BENCH_TMP/$d" && env "${MSR_ENV[@]}" "$MSR_BIN" manage addorg bench --owner admin) \
    >>"$BENCH_TMP/$d/web.log" 2>&1 || die "$d: msr manage addorg failed"
  (cd "$BENCH_TMP/$d" && exec env "${MSR_ENV[@]}" "$MSR_BIN" serve --bind "127.0.0.1:$port" "${opts[@]}") \
    >>"$BENCH_TMP/$d/web.log" 2>&1 &
  WEB_PID[$d]=$!
  URL[$d]="http://127.0.0.1:$port"; HOSTPORT[$d]="127.0.0.1:$port"
  wait_http "${URL[$d]}/v2/" 120 "${WEB_PID[$d]}" "$BENCH_TMP/$d/web.log"
  log "$d: msr serve at ${URL[$d]} (pid ${WEB_PID[$d]}, data $BENCH_TMP/$d/data)"
}
start_worker() {  # A's Celery worker with beat
  msr_env A
  (cd "$BENCH_TMP/A" && exec env "${MSR_ENV[@]}" "$MSR_BIN" worker --concurrency "$WORKER_CONC" --beat) \
    >"$BENCH_TMP/A/worker.log" 2>&1 &
  WORKER_PID=$!
  local i
  for i in $(seq 600); do
    grep -q ' ready\.' "$BENCH_TMP/A/worker.log" 2>/dev/null && break
    kill -0 "$WORKER_PID" 2>/dev/null || { tail -n 30 "$BENCH_TMP/A/worker.log" >&2; die "msr worker exited"; }
    sleep 0.1
  done
  grep -q ' ready\.' "$BENCH_TMP/A/worker.log" || die "msr worker not ready after 60 s"
  log "A: msr worker --concurrency $WORKER_CONC --beat (pid $WORKER_PID), broker $REDIS_URL"
}

api() {  # api A|B METHOD PATH [JSON] -> body of /api/v0/PATH as admin (token; fails on HTTP >= 400)
  local d=$1 data=() out code
  [ $# -lt 4 ] || data=(--data "$4")
  out=$(curl -sS -H "Authorization: Bearer ${TOKEN[$d]}" -X "$2" -H 'Content-Type: application/json' \
        "${data[@]}" -w '\n%{http_code}' "${URL[$d]}/api/v0/$3") || die "$d: API $2 /api/v0/$3: curl failed"
  code=${out##*$'\n'}; out=${out%$'\n'*}
  [ "$code" -lt 400 ] || die "$d: API $2 /api/v0/$3 ${4:-} -> HTTP $code: $out"
  printf '%s\n' "$out"
}
jget() {  # jget KEY < JSON: one top-level field (or a.b path), printed
  "$PYTHON" -c 'import json,sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else v[k]
print(json.dumps(v) if isinstance(v, (dict, list)) else v)' "$1"
}
tag_digest() {  # tag_digest A|B REPO TAG -> digest (empty if the tag does not exist)
  local out
  out=$(curl -sS -H "Authorization: Bearer ${TOKEN[$1]}" -w '\n%{http_code}' \
        "${URL[$1]}/api/v0/repositories/$2/tags/$3") || die "$1: GET tag $2:$3 failed"
  [ "${out##*$'\n'}" = 200 ] || return 0
  jget digest <<<"${out%$'\n'*}"
}

# CPU seconds (user + system, children waited for included) of A's and B's process trees
cpu_a() { tree_cpu "${WEB_PID[A]}" "$WORKER_PID"; }
cpu_b() { tree_cpu "${WEB_PID[B]}"; }

# The job client: POST /api/v0/jobs, poll GET /api/v0/jobs/<id> until it ends; JSON out.
cat >"$BENCH_TMP/jobctl.py" <<'PY'
import json, sys, time, urllib.request
from datetime import datetime

base, token, action, policy, tag, poll, timeout, out = sys.argv[1:9]
poll, timeout = float(poll), float(timeout)
headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

def call(method, path, body=None):
    req = urllib.request.Request(f"{base}/api/v0/{path}", method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)

def ts(value):
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None

t0 = time.time()
job = call("POST", "jobs", {"action": action, "policy": int(policy), "tag": tag})
t_post = time.time()
samples = []
while True:
    job = call("GET", f"jobs/{job['id']}")
    now = time.time()
    samples.append([round(now - t0, 3), job["status"], job["bytesDone"], job["bytesTotal"]])
    if job["status"] in ("done", "failed", "canceled"):
        break
    if now - t0 > timeout:
        job["status"] = "timeout"
        break
    time.sleep(poll)
created, started, finished = ts(job["createdAt"]), ts(job["startedAt"]), ts(job["finishedAt"])
res = {
    "id": job["id"], "status": job["status"], "error": job.get("error", ""),
    "bytesDone": job["bytesDone"], "bytesTotal": job["bytesTotal"], "results": job["results"],
    "attempts": job["attempts"],
    "seen": round(now - t0, 4),                     # POST sent -> a GET saw it end
    "post": round(t_post - t0, 4),                  # the POST's own response time
    "to_finished": round(finished - t0, 4) if finished else None,   # POST sent -> finishedAt
    "queue": round(started - created, 4) if started else None,      # createdAt -> startedAt
    "run": round(finished - started, 4) if finished and started else None,  # startedAt -> finishedAt
    "samples": samples, "log": job.get("log", ""),
}
json.dump(res, open(out + ".json", "w"))
with open(out + ".txt", "w") as f:   # for the shell: one line of fields, then the results
    f.write(" ".join(str(res[k]) for k in ("id", "status", "bytesDone", "bytesTotal", "seen", "to_finished",
                                            "run", "queue", "post", "attempts")) + "\n")
    f.write(json.dumps(res["results"]) + "\n")
with open(out + ".log", "w") as f:
    f.write(res["log"])
    f.write(f"(s since POST, status, bytesDone, bytesTotal) as polled: {samples}\n")
    if res["error"]:
        f.write(f"error: {res['error']}\n")
PY
JOBN=0
# run_job ACTION POLICY TAG POLL -> J_ID J_STATUS J_DONE J_TOTAL J_SEEN J_FIN J_RUN J_QUEUE
# J_POST J_ATTEMPTS J_RESULTS (compact JSON), J_LOG (file with the job's log)
run_job() {
  JOBN=$((JOBN + 1)); local out="$BENCH_TMP/job$JOBN"
  "$PYTHON" "$BENCH_TMP/jobctl.py" "${URL[A]}" "${TOKEN[A]}" "$1" "$2" "$3" "$4" 1800 "$out" \
    || die "job client failed ($1, policy $2)"
  { read -r J_ID J_STATUS J_DONE J_TOTAL J_SEEN J_FIN J_RUN J_QUEUE J_POST J_ATTEMPTS; read -r J_RESULTS; } <"$out.txt"
  J_LOG="$out.log"
}

# -- images ---------------------------------------------------------------------------
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
push_a() {  # push_a REPO: the current IMG to A as REPO:v1 (locally), drop the layout -> DIGEST
  timeout 1800 skopeo copy --quiet --dest-tls-verify=false --dest-creds "admin:${TOKEN[A]}" \
    "oci:$IMG:v1" "docker://${HOSTPORT[A]}/$1:v1" >"$BENCH_TMP/push.out" 2>&1 \
    || { cat "$BENCH_TMP/push.out" >&2; die "push of $1 to A failed"; }
  rm -rf "$IMG"
  DIGEST=$(tag_digest A "$1" v1)
  [ -n "$DIGEST" ] || die "A: $1:v1 not found after the push"
}

# -- results --------------------------------------------------------------------------
declare -A V=()   # V[key] = "v1 v2 ..." per round / run
add() { V[$1]="${V[$1]:-} $2"; }
med() { [ -n "${V[$1]:-}" ] || { echo n/a; return; }; printf '%s\n' ${V[$1]} | median; }
NOTES=()

# ===== start ========================================================================
log "scratch dir $BENCH_TMP${ENV_SHOWN:+; environment: $ENV_SHOWN}"
if [ -n "$EXTRA_PYTHONPATH" ]; then
  NOTES+=("$MSR_BIN cannot import the \`mirroring\` app outside the checkout (installed before pyproject.toml listed it? reinstall); the msr processes ran with PYTHONPATH=$EXTRA_PYTHONPATH")
  log "note: ${NOTES[-1]}"
fi
keys=$(redis-cli -u "$REDIS_URL" dbsize 2>/dev/null || echo "?")
redis-cli -u "$REDIS_URL" flushdb >/dev/null || die "could not flush $REDIS_URL"
REDIS_FLUSHED=1
log "flushed $REDIS_URL ($keys keys) for A's broker"
start_deployment A
start_deployment B
start_worker
RUN_ID=$(date +%H%M%S)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

# ===== push mirror vs skopeo copy ===================================================
LAYER_MB=$(awk -v s="$SIZE_MB" -v l="$LAYERS" 'BEGIN{ printf "%.4f", s / l }')
PROMO_SRC=""; PROMO_DIGEST=""; PROMO_BYTES=""
mirror_once() {  # mirror_once ROUND REPO DIGEST BYTES
  local r=$1 repo=$2 digest=$3 bytes=$4 pid a0 a1 b0 b1 got
  pid=$(api A POST "repositories/$repo/pushMirroringPolicies" "{\"enabled\":true,
    \"rules\":[{\"field\":\"tag\",\"operator\":\"eq\",\"values\":[\"v1\"]}],
    \"remoteHost\":\"${URL[B]}\",\"remoteRepository\":\"$repo\",\"username\":\"admin\",
    \"authToken\":\"${TOKEN[B]}\",\"tagTemplate\":\"%n\"}" | jget id)
  [ -z "$(tag_digest B "$repo" v1)" ] || die "B already has $repo:v1 before the mirror"
  sync
  a0=$(cpu_a); b0=$(cpu_b)
  run_job push_mirror "$pid" v1 "$POLL"
  a1=$(cpu_a); b1=$(cpu_b)
  { echo "--- round $r mirror job $J_ID log:"; cat "$J_LOG"; } >&2
  [ "$J_STATUS" = done ] || die "round $r: mirror job $J_ID: $J_STATUS (see its log above)"
  [ "$J_ATTEMPTS" = 1 ] || die "round $r: mirror job $J_ID took $J_ATTEMPTS attempts (see its log above)"
  [ "$J_DONE" = "$bytes" ] && [ "$J_TOTAL" = "$bytes" ] \
    || die "round $r: mirror job bytesDone $J_DONE, bytesTotal $J_TOTAL, image $bytes bytes"
  [[ $J_RESULTS == *"\"digest\": \"$digest\""* ]] || die "round $r: mirror job result $J_RESULTS, expected $digest"
  got=$(tag_digest B "$repo" v1)
  [ "$got" = "$digest" ] || die "round $r: B's $repo:v1 is '$got', A's is $digest"
  add mirror_seen "$J_SEEN"; add mirror_fin "$J_FIN"; add mirror_run "$J_RUN"
  add mirror_queue "$J_QUEUE"; add mirror_post "$J_POST"
  add mirror_cpu_a "$(elapsed "$a0" "$a1")"; add mirror_cpu_b "$(elapsed "$b0" "$b1")"
  log "round $r mirror: $J_SEEN s seen done (POST -> finishedAt $J_FIN s; job $J_RUN s;" \
      "queue $J_QUEUE s); CPU A $(elapsed "$a0" "$a1") s, B $(elapsed "$b0" "$b1") s"
}
skopeo_once() {  # skopeo_once ROUND REPO DIGEST
  local r=$1 repo=$2 digest=$3 a0 a1 b0 b1 c0 c1 t0 t1 got
  [ -z "$(tag_digest B "$repo" v1)" ] || die "B already has $repo:v1 before skopeo copy"
  sync
  a0=$(cpu_a); b0=$(cpu_b); children_cpu c0
  t0=$EPOCHREALTIME
  timeout 1800 skopeo copy --src-tls-verify=false --dest-tls-verify=false \
    --src-creds "admin:${TOKEN[A]}" --dest-creds "admin:${TOKEN[B]}" \
    "docker://${HOSTPORT[A]}/$repo:v1" "docker://${HOSTPORT[B]}/$repo:v1" >"$BENCH_TMP/skopeo.out" 2>&1 \
    || { cat "$BENCH_TMP/skopeo.out" >&2; die "round $r: skopeo copy A -> B failed"; }
  t1=$EPOCHREALTIME
  children_cpu c1; a1=$(cpu_a); b1=$(cpu_b)
  if grep -qiE 'skipped|already exists' "$BENCH_TMP/skopeo.out"; then
    cat "$BENCH_TMP/skopeo.out" >&2; die "round $r: skopeo reused blobs instead of copying them"
  fi
  got=$(tag_digest B "$repo" v1)
  [ "$got" = "$digest" ] || die "round $r: skopeo: B's $repo:v1 is '$got', A's is $digest"
  add skopeo "$(elapsed "$t0" "$t1")"
  add skopeo_cpu_a "$(elapsed "$a0" "$a1")"; add skopeo_cpu_b "$(elapsed "$b0" "$b1")"
  add skopeo_cpu_c "$(elapsed "$c0" "$c1")"
  log "round $r skopeo copy: $(elapsed "$t0" "$t1") s; CPU A $(elapsed "$a0" "$a1") s, B $(elapsed "$b0" "$b1") s," \
      "skopeo $(elapsed "$c0" "$c1") s"
}

if [ "$DO_MIRROR" = 1 ]; then
  for r in $(seq "$ROUNDS"); do
    log "round $r/$ROUNDS: two new images of $LAYERS x $LAYER_MB MiB, pushed to A"
    make_image "$LAYERS" "$LAYER_MB"; MBYTES=$IMG_BYTES; MREPO="bench/mir-$RUN_ID-r$r"
    push_a "$MREPO"; MDIGEST=$DIGEST
    make_image "$LAYERS" "$LAYER_MB"; SBYTES=$IMG_BYTES; SREPO="bench/sko-$RUN_ID-r$r"
    push_a "$SREPO"; SDIGEST=$DIGEST
    IMAGE_BYTES=$MBYTES; IMAGE_BLOBS=$IMG_BLOBS
    if [ -z "$PROMO_SRC" ]; then PROMO_SRC=$MREPO; PROMO_DIGEST=$MDIGEST; PROMO_BYTES=$MBYTES; fi
    if [ $((r % 2)) = 1 ]; then
      mirror_once "$r" "$MREPO" "$MDIGEST" "$MBYTES"; skopeo_once "$r" "$SREPO" "$SDIGEST"
    else
      skopeo_once "$r" "$SREPO" "$SDIGEST"; mirror_once "$r" "$MREPO" "$MDIGEST" "$MBYTES"
    fi
    d=$((SBYTES - MBYTES)); [ "${d#-}" -le 65536 ] || NOTES+=("round $r: the two images differ in size by $d bytes")
  done
fi

# ===== promotion ====================================================================
if [ "$DO_PROMOTE" = 1 ]; then
  if [ -z "$PROMO_SRC" ]; then
    log "promotion: making a $LAYERS x $LAYER_MB MiB image"
    make_image "$LAYERS" "$LAYER_MB"; PROMO_BYTES=$IMG_BYTES; PROMO_SRC="bench/prom-src-$RUN_ID"
    push_a "$PROMO_SRC"; PROMO_DIGEST=$DIGEST
  fi
  TINY_MB=$(awk -v k="$TINY_KB" 'BEGIN{ printf "%.6f", k / 1024 }')
  make_image 1 "$TINY_MB"; TINY_BYTES=$IMG_BYTES; TINY_SRC="bench/tiny-$RUN_ID"
  push_a "$TINY_SRC"; TINY_DIGEST=$DIGEST
  promote_once() {  # promote_once big|tiny K [NAME]: run K (0: warm-up, named NAME)
    local kind=$1 k=$2 src digest target pid got want
    if [ "$kind" = big ]; then src=$PROMO_SRC; digest=$PROMO_DIGEST; else src=$TINY_SRC; digest=$TINY_DIGEST; fi
    target="bench/prom-$kind-$RUN_ID-${3:-$k}"
    pid=$(api A POST "repositories/$src/promotionPolicies" "{\"enabled\":true,
      \"rules\":[{\"field\":\"tag\",\"operator\":\"eq\",\"values\":[\"v1\"]}],
      \"targetRepository\":\"$target\",\"tagTemplate\":\"%n-prod\"}" | jget id)
    run_job promote "$pid" v1 "$PROMOTE_POLL"
    { echo "--- promotion $kind run $k, job $J_ID log:"; cat "$J_LOG"; } >&2
    [ "$J_STATUS" = done ] || die "promotion $kind run $k: job $J_ID: $J_STATUS (see its log above)"
    want="[{\"tag\": \"v1\", \"targetTag\": \"v1-prod\", \"digest\": \"$digest\", \"target\": \"$target\"}]"
    [ "$J_RESULTS" = "$want" ] || die "promotion $kind run $k: results $J_RESULTS, expected $want"
    [ "$J_TOTAL" = 0 ] && [ "$J_DONE" = 0 ] || die "promotion $kind run $k: $J_DONE of $J_TOTAL bytes copied, expected none"
    got=$(tag_digest A "$target" v1-prod)
    [ "$got" = "$digest" ] || die "promotion $kind run $k: $target:v1-prod is '$got', expected $digest"
    [ "$k" != 0 ] || { WARMUP+=("$(ms "$J_RUN") ms (end to end $(ms "$J_FIN") ms)"); return 0; }
    add "prom_${kind}_run" "$J_RUN"; add "prom_${kind}_fin" "$J_FIN"
    add "prom_${kind}_seen" "$J_SEEN"; add "prom_${kind}_queue" "$J_QUEUE"
    add "prom_${kind}_post" "$J_POST"
    log "promotion $kind run $k: job $(ms "$J_RUN") ms, POST -> finishedAt $(ms "$J_FIN") ms," \
        "seen done $(ms "$J_SEEN") ms (queue $(ms "$J_QUEUE") ms, POST $(ms "$J_POST") ms)"
  }
  # Warm-up, not counted: one tiny promotion per worker process, so that no timed run pays
  # for a pool process's first job (its first database connection, lazy imports).
  WARMUP=()
  for k in $(seq "$WORKER_CONC"); do promote_once tiny 0 "w$k"; done
  log "promotion warm-up (not counted): ${WARMUP[*]}"
  for k in $(seq "$PROMOTE_RUNS"); do   # alternate which size goes first
    if [ $((k % 2)) = 1 ]; then promote_once big "$k"; promote_once tiny "$k"
    else promote_once tiny "$k"; promote_once big "$k"; fi
  done
fi
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# ===== report =======================================================================
mib() { awk -v v="$1" 'BEGIN{ printf "%.1f\n", v / 1048576 }'; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN{ if (s == "" || s == "n/a" || s + 0 == 0) print "n/a"; else printf "%.0f\n", b / 1048576 / s }'; }
list() { local x out=""; for x in ${V[$1]:-}; do out+="${out:+, }$(fmt2 "$x")"; done; echo "$out"; }
listms() { local x out=""; for x in ${V[$1]:-}; do out+="${out:+, }$(ms "$x")"; done; echo "$out"; }
W=${MSR_WORKERS:-${MSR_WEB_WORKERS:-2}}; T=${MSR_THREADS:-${MSR_WEB_THREADS:-8}}
REPORT="$BENCH_TMP/report.md"
{
  echo "## mirror: push mirroring vs skopeo copy, and promotion"
  echo
  echo "Two deployments on this machine, each \`msr serve\` ($W workers x $T threads, SQLite, own data dir);"
  echo "A also runs \`msr worker --concurrency $WORKER_CONC --beat\` (Celery, Redis broker)."
  echo "Environment: ${ENV_SHOWN:-MSR defaults (MSR_MIRROR_PARALLEL_BLOBS=3, MSR_MIRROR_CHUNK_BYTES=64 MiB)}."
  echo "Machine: $(host_summary); load average $LOAD0 at the start, $LOAD1 at the end."
  echo
if [ "$DO_MIRROR" = 1 ]; then
  ms_=$(med mirror_seen); mf=$(med mirror_fin); mr=$(med mirror_run); sk=$(med skopeo)
  echo "### A -> B, $LAYERS-layer image of $(mib "$IMAGE_BYTES") MiB ($IMAGE_BLOBS blobs), median of $ROUNDS round(s)"
  echo
  echo "| copy | seconds | MiB/s | CPU s in A | CPU s in B | CPU s client | per round s |"
  echo "|---|---:|---:|---:|---:|---:|---|"
  echo "| MSR push mirror: POST /jobs -> GET sees done (poll ${POLL} s) | $(fmt2 "$ms_") | $(rate "$IMAGE_BYTES" "$ms_") | $(fmt2 "$(med mirror_cpu_a)") | $(fmt2 "$(med mirror_cpu_b)") | (in A) | $(list mirror_seen) |"
  echo "| MSR push mirror: POST /jobs -> job's finishedAt | $(fmt2 "$mf") | $(rate "$IMAGE_BYTES" "$mf") | | | | $(list mirror_fin) |"
  echo "| MSR push mirror: job's startedAt -> finishedAt | $(fmt2 "$mr") | $(rate "$IMAGE_BYTES" "$mr") | | | | $(list mirror_run) |"
  echo "| skopeo $(skopeo --version | awk '{print $3}') copy docker://A docker://B | $(fmt2 "$sk") | $(rate "$IMAGE_BYTES" "$sk") | $(fmt2 "$(med skopeo_cpu_a)") | $(fmt2 "$(med skopeo_cpu_b)") | $(fmt2 "$(med skopeo_cpu_c)") | $(list skopeo) |"
  echo "| **mirror / skopeo** (seen done) | **$(ratio "$ms_" "$sk")** | | | | | |"
  echo
  echo "- Mirror end to end = POST (median $(ms "$(med mirror_post)") ms) + Celery queue and claim (createdAt -> startedAt,"
  echo "  median $(ms "$(med mirror_queue)") ms) + the job + up to one poll interval. CPU: /proc utime+stime of A's"
  echo "  web + worker trees and B's web tree during the copy (the mirror's client is A's worker);"
  echo "  A's figure for the mirror includes answering the job polls."
  echo "- Each copy moved a new image into a new repository of B; bytesDone = bytesTotal = $IMAGE_BYTES and B's"
  echo "  manifest digest = A's were checked for every copy; skopeo reported no reused blob."
  echo "- Order alternates (odd rounds: mirror first). Credentials: personal access tokens (no password hashing)."
fi
if [ "$DO_PROMOTE" = 1 ]; then
  [ "$DO_MIRROR" = 1 ] && echo
  echo "### Promotion (link, no bytes moved), median of $PROMOTE_RUNS run(s) per image, milliseconds"
  echo
  echo "Each run: a new promotion policy (tagTemplate \"%n-prod\") into a new target repository, POST /api/v0/jobs"
  echo "{\"action\":\"promote\"}, GET polled every ${PROMOTE_POLL} s. The job links all blobs, copies the manifest row,"
  echo "sets the tag; the target's v1-prod was checked to resolve to the source digest."
  echo
  echo "| image | job startedAt -> finishedAt | POST -> finishedAt (end to end) | POST -> GET sees done | Celery queue (createdAt -> startedAt) | job per run |"
  echo "|---|---:|---:|---:|---:|---|"
  for kind in big tiny; do
    if [ "$kind" = big ]; then label="$(mib "$PROMO_BYTES") MiB, $LAYERS layers"; else label="tiny: $(awk -v b="$TINY_BYTES" 'BEGIN{printf "%.1f", b/1024}') KiB, 1 layer"; fi
    echo "| $label | $(ms "$(med prom_${kind}_run)") | $(ms "$(med prom_${kind}_fin)") | $(ms "$(med prom_${kind}_seen)") | $(ms "$(med prom_${kind}_queue)") | $(listms prom_${kind}_run) |"
  done
  echo "| big / tiny | $(ratio "$(med prom_big_run)" "$(med prom_tiny_run)") | $(ratio "$(med prom_big_fin)" "$(med prom_tiny_fin)") | | | |"
  echo
  echo "- End to end per run (ms), big: $(listms prom_big_fin); tiny: $(listms prom_tiny_fin)."
  echo "- Before the timed runs, one tiny promotion per worker pool process (not counted): ${WARMUP[*]}."
fi
  for n in "${NOTES[@]}"; do echo "- $n"; done
  echo
  echo "### Targets"
  echo
if [ "$DO_MIRROR" = 1 ]; then
  x=$(awk -v a="$ms_" -v b="$sk" 'BEGIN{ printf "%.2f", a / b }')
  echo "- Push mirror within 1.1x of skopeo copy (median, POST -> seen done vs skopeo wall time): ${x}x ->" \
       "$(awk -v x="$x" 'BEGIN{ print (x <= 1.1) ? "met" : "NOT met" }')."
fi
if [ "$DO_PROMOTE" = 1 ]; then
  pb=$(ms "$(med prom_big_run)"); pt=$(ms "$(med prom_tiny_run)")
  echo "- Promotion of the $(mib "$PROMO_BYTES") MiB image under 100 ms (job's own duration, median): ${pb} ms ->" \
       "$(awk -v x="$pb" 'BEGIN{ print (x < 100) ? "met" : "NOT met" }'); tiny image ${pt} ms" \
       "($(ratio "$(med prom_big_run)" "$(med prom_tiny_run)") big/tiny; no bytes copied in either)."
  echo "- Promotion end to end (POST -> finishedAt, includes the API call and the Celery queue): big" \
       "$(ms "$(med prom_big_fin)") ms, tiny $(ms "$(med prom_tiny_fin)") ms (not the target's measure)."
fi
  echo
} >"$REPORT"

cat "$REPORT"
if [ "$SAVE" = 1 ]; then
  {
    echo "# MSR mirroring benchmark, $TS"
    echo
    echo "- machine: $(host_summary)"
    echo "- msr: $MSR_BIN; skopeo $(skopeo --version 2>/dev/null | awk '{print $3}'); Redis $REDIS_URL"
    echo "- command: $0 $ORIG_ARGS"
    echo
    cat "$REPORT"
  } >"$RES"
  log "results: $RES"
fi
