#!/usr/bin/env bash
# MSR on its filesystem store next to MSR on the S3 store, in one run: skopeo push and pull
# times, MSR's CPU and peak memory, and what the S3 path costs MSR (multipart upload while
# the bytes arrive, a server-side copy when the upload completes, presigned redirects for
# the pulls). The bucket is moto's standalone S3 emulator (`moto_server`, from the
# checkout's .venv) on 127.0.0.1: an in-process Python server, so its own speed says
# nothing about AWS S3 or MinIO; its RSS and CPU are reported apart from MSR's.
#
# Deployments, each a fresh `msr serve` (own scratch data dir, SQLite unless --db postgres,
# admin with a random password, MSR_ACCESS_LOG=true so each request's duration is known):
#   fs   MSR_STORAGE=filesystem (default; fsync on)
#   s3   MSR_STORAGE=s3 in a bucket of its own moto_server, MSR_S3_PART_SIZE 16 MiB (MSR's
#        default), path-style addressing, MSR_S3_REDIRECT=true (blob GETs answer 307 to a
#        presigned URL of the bucket; skopeo follows it to moto)
# Each deployment first gets two untimed warm-up pushes and pulls of a tiny image.
#
# Each of --rounds rounds (default 3) makes two images with mkimage.py and a new seed
# (random data, gzip level 0, so nothing compresses and skopeo pushes the digests it
# was given): "big" = one --size-mb MiB layer (default 512), "multi" = --layers x
# --layer-mb MiB (default 5 x 20). Then, for fs and s3 (order alternating between
# rounds), for each image: push (`skopeo copy oci:<layout>:v1 docker://<msr>/admin/<new
# repo>:v1`) and pull (`skopeo copy docker://... oci:<new layout>:v1`, layers fetched in
# parallel; --dest dir for dir:, one after another), wall time, `sync` before each.
# Fresh blobs each round: skopeo's blob-info cache would mount known blobs instead of
# pushing them (the run fails if skopeo reports a reused blob). Pulled layers are
# checked (file named by digest, size). Medians over the rounds.
#
# Measured during each copy:
#   - peak RSS of MSR's process tree (gunicorn master + workers; rss_sampler.py every
#     50 ms, a sampler per copy): sum, largest process, PSS sum, and the growth of the sum
#     and of the largest process over their sizes just before the copy; moto's RSS apart
#     (every 0.5 s: reading a multi-GiB process's smaps_rollup 20 times a second costs
#     about 2/3 of a core)
#   - CPU seconds of MSR's tree, of moto, of skopeo; the machine's busy CPU seconds, so
#     that other work on the machine shows (reported as "others")
#   - from MSR's access log: duration of the layer's PATCH (the bytes arriving; on S3 the
#     parts go to the bucket as they fill) and of the PUT that completes the upload (file
#     store: fsync + rename; S3: complete the multipart upload, then a server-side copy
#     to the digest's key, then delete the upload's objects), and MSR's and moto's CPU
#     within each (a CPU sampler every 0.1 s against the requests' times); blob GETs by status.
#     Checks: every upload completed with 201, no 5xx; on a pull, fs answers every blob
#     GET with 200, s3 with 307, and moto's log shows the GETs of the presigned URLs.
#
# --part-sizes-mb "5 64" (default; "" to skip): afterwards, one more S3 deployment per
# size (own moto) with MSR_S3_PART_SIZE at that many MiB, one push + pull of the last
# round's two images each (a single run, not a median): the memory held per upload
# should follow the part size, not the layer size.
#
# Usage: ./s3.sh [--size-mb 512] [--layers 5] [--layer-mb 20] [--rounds 3]
#          [--part-sizes-mb "5 64"] [--dest oci|dir] [--gzip-level 0]
#          [--out DIR | --no-save] [--msr-bin PATH] [--msr-workers N] [--msr-threads N]
#          [--db sqlite|postgres] [--pg-url URL] [--keep]
#   --out DIR   results go to DIR/<UTC time>-s3.md (+ .log, and .jsonl: every copy's raw
#               figures); default bench/results
#   MOTO_BIN=PATH  moto_server to use (default <checkout>/.venv/bin/moto_server)
# Defaults: about 5-7 minutes on 2 cores; ~3 GiB of scratch disk (two copies of each
# round's images, moto's spilled objects, one pull at a time). Smoke test (~30 s):
#   ./s3.sh --size-mb 32 --layers 2 --layer-mb 6 --rounds 1 --part-sizes-mb "" --no-save
# Needs: bash, python3, curl, skopeo, sync, msr and moto_server (pip install -e '.[test]'
# into .venv). --msr-url is not supported: both deployments are started here.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

ORIG_ARGS="$*"
SIZE_MB=512; LAYERS=5; LAYER_MB=20; ROUNDS=3; PART_SIZES_MB="5 64"; DEST=oci; GZIP_LEVEL=0
OUT="$BENCH_DIR/results"; SAVE=1
while [ $# -gt 0 ]; do
  case $1 in
    --size-mb) SIZE_MB=$2; shift 2;;
    --layers) LAYERS=$2; shift 2;;
    --layer-mb) LAYER_MB=$2; shift 2;;
    --rounds) ROUNDS=$2; shift 2;;
    --part-sizes-mb) PART_SIZES_MB=$2; shift 2;;
    --dest) DEST=$2; shift 2;;
    --gzip-level) GZIP_LEVEL=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --no-save) SAVE=0; shift;;
    -h|--help) usage; exit 0;;
    *) common_opt "$@" || die "unknown argument $1 (see --help)"; shift "$COMMON_SHIFT";;
  esac
done
for v in LAYERS ROUNDS GZIP_LEVEL; do [[ ${!v} =~ ^[0-9]+$ ]] || die "$v: ${!v} is not a whole number"; done
for v in SIZE_MB LAYER_MB; do [[ ${!v} =~ ^[0-9]+([.][0-9]+)?$ ]] || die "bad value ${!v} for $v"; done
[ "$LAYERS" -ge 1 ] && [ "$ROUNDS" -ge 1 ] || die "--layers and --rounds must be at least 1"
for p in $PART_SIZES_MB; do
  [[ $p =~ ^[0-9]+$ ]] && [ "$p" -ge 5 ] || die "--part-sizes-mb: whole MiB, at least 5 (S3's minimum part)"
done
case $DEST in oci|dir) ;; *) die "--dest oci or dir";; esac
[ -z "$MSR_URL_ARG" ] || die "s3.sh starts its own deployments; --msr-url is not supported"
[ -n "$MSR_BIN" ] && command -v "$MSR_BIN" >/dev/null 2>&1 || die "msr command not found (--msr-bin)"
need "$PYTHON" curl skopeo sync

TS=$(date -u +%Y%m%dT%H%M%SZ)
if [ "$SAVE" = 1 ]; then
  mkdir -p "$OUT"
  RES="$OUT/$TS-s3.md"; LOGF="$OUT/$TS-s3.log"
  exec 2> >(tee -a "$LOGF" >&2)
fi

# -- processes --------------------------------------------------------------------------
declare -A WEB_PID=() HOSTPORT=() PW=() ALOG=() MOTO=() MOTO_LOG=() PART=() STORE=()
BUCKET=msr-bench
s3_cleanup() {
  local rc=$? d
  if [ "$rc" != 0 ] && [ -n "$BENCH_TMP" ]; then
    for d in "${!ALOG[@]}"; do
      [ -s "${ALOG[$d]}" ] || continue
      echo "--- last lines of $d's log (${ALOG[$d]}):" >&2; grep -v '"msr.access"' "${ALOG[$d]}" | tail -n 15 >&2 || true
    done
  fi
  for d in "${!WEB_PID[@]}"; do stop_gunicorn "${WEB_PID[$d]}"; done
  WEB_PID=()
  bench_cleanup   # samplers, moto (BENCH_PIDS), scratch databases, scratch dir
}
bench_mktemp
trap s3_cleanup EXIT
trap 'exit 130' INT TERM

fmt() { awk -v v="$1" -v d="${2:-2}" 'BEGIN{ if (v=="" || v=="n/a" || v=="nan") print "n/a"; else printf "%.*f\n", d, v }'; }

# start_deployment NAME fs|s3 [PART_MIB]
start_deployment() {
  local d=$1 store=$2 part=${3:-16} port opts=() envs=() dir="$BENCH_TMP/$1"
  mkdir -p "$dir"
  PW[$d]="bench-$("$PYTHON" -c 'import secrets; print(secrets.token_hex(12))')"
  msr_env_unset
  envs=("${MSR_ENV_UNSET[@]}" "MSR_DATA_DIR=$dir/data" "MSR_ADMIN_PASSWORD=${PW[$d]}"
        MSR_ACCESS_LOG=true MSR_LOG_FORMAT=json)
  if [ "$MSR_DB" = postgres ]; then pg_scratch_db; envs+=("DATABASE_URL=$PG_SCRATCH_URL"); fi
  STORE[$d]=$store
  if [ "$store" = s3 ]; then
    start_moto "$dir/moto"
    MOTO[$d]=$MOTO_PID; MOTO_LOG[$d]="$dir/moto/moto.log"; PART[$d]=$part
    s3_create_bucket "$MOTO_URL" "$BUCKET"
    envs+=(MSR_STORAGE=s3 "MSR_S3_BUCKET=$BUCKET" "MSR_S3_ENDPOINT_URL=$MOTO_URL"
           MSR_S3_ACCESS_KEY_ID=bench MSR_S3_SECRET_ACCESS_KEY=bench-secret
           MSR_S3_ADDRESSING_STYLE=path "MSR_S3_PART_SIZE=$((part * 1024 * 1024))" MSR_S3_REDIRECT=true)
    log "$d: moto_server at $MOTO_URL (pid $MOTO_PID)"
  else
    envs+=(MSR_STORAGE=filesystem)
  fi
  [ -z "$MSR_WORKERS" ] || opts+=(--workers "$MSR_WORKERS")
  [ -z "$MSR_THREADS" ] || opts+=(--threads "$MSR_THREADS")
  port=$(free_port)
  ALOG[$d]="$dir/msr.log"
  (cd "$dir" && env "${envs[@]}" "$MSR_BIN" manage migrate -v 0) >"${ALOG[$d]}" 2>&1 \
    || die "$d: msr manage migrate failed (see ${ALOG[$d]})"
  (cd "$dir" && env "${envs[@]}" "$MSR_BIN" manage adduser admin --admin --password "${PW[$d]}") \
    >>"${ALOG[$d]}" 2>&1 || die "$d: msr manage adduser failed (see ${ALOG[$d]})"
  (cd "$dir" && exec env "${envs[@]}" "$MSR_BIN" serve --bind "127.0.0.1:$port" "${opts[@]}") \
    >>"${ALOG[$d]}" 2>&1 &
  WEB_PID[$d]=$!
  HOSTPORT[$d]="127.0.0.1:$port"
  wait_http "http://127.0.0.1:$port/v2/" 120 "${WEB_PID[$d]}" "${ALOG[$d]}"
  log "$d: msr serve at http://127.0.0.1:$port (pid ${WEB_PID[$d]}, $store${3:+, part $part MiB}, $MSR_DB)"
}
stop_deployment() {
  local d=$1
  stop_gunicorn "${WEB_PID[$d]}"; unset "WEB_PID[$d]"
  if [ -n "${MOTO[$d]:-}" ]; then stop_pid "${MOTO[$d]}" 10; forget_pid "${MOTO[$d]}"; fi
}

# -- images ------------------------------------------------------------------------------
check_pulled() {  # check_pulled DIR LAYERSFILE
  local hex size got f
  while read -r hex size; do
    if [ "$DEST" = oci ]; then f="$1/blobs/sha256/$hex"; else f="$1/$hex"; fi
    got=$(stat -c %s "$f" 2>/dev/null || echo missing)
    [ "$got" = "$size" ] || die "pulled layer $hex: size $got, want $size"
  done <"$2"
}

# record.py: one JSON line per copy from the figures passed as key=value, the samplers'
# JSON files and the lines the copy added to MSR's access log (and moto's log); checks.
cat >"$BENCH_TMP/record.py" <<'PY'
import bisect, json, re, sys
from datetime import datetime
out, args = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
rec = {}
for k, v in args.items():
    if k.startswith("rss_"):
        try:
            rec[k] = json.load(open(v))
        except (OSError, ValueError):
            rec[k] = None
    elif k in ("log", "from", "moto_log", "moto_from", "blobs", "cpu"):
        continue
    else:
        try:
            rec[k] = float(v)
        except ValueError:
            rec[k] = v
lines = open(args["log"], errors="replace").read().splitlines()[int(args["from"]):]
patch, put, gets, statuses, n = [], [], {}, {}, 0
for line in lines:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("logger") != "msr.access":
        continue
    n += 1
    route, method, status, ms = e.get("route", ""), e.get("method"), e.get("status"), e.get("duration_ms", 0)
    statuses[str(status)] = statuses.get(str(status), 0) + 1
    if route.endswith("/blobs/uploads/<upload_id>"):
        end = datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
        (patch if method == "PATCH" else put if method == "PUT" else []).append((ms, status, end - ms / 1000, end))
    if method == "GET" and route.endswith("/blobs/<digest>"):
        gets[str(status)] = gets.get(str(status), 0) + 1
rec.update(requests=n, statuses=statuses, blob_gets=gets,
           patch_ms=sorted(x[0] for x in patch), put_ms=sorted(x[0] for x in put))
# CPU of MSR's tree and of moto during the longest PATCH and the longest PUT (the layer's,
# for a one-layer image), interpolated from the 0.1 s samples
samples = [tuple(map(float, l.split())) for l in open(args["cpu"]) if len(l.split()) == 3]
def at(t, col):
    ts = [s[0] for s in samples]
    i = bisect.bisect_left(ts, t)
    if i <= 0:
        return samples[0][col]
    if i >= len(samples):
        return samples[-1][col]
    (t0, *a), (t1, *b) = samples[i - 1], samples[i]
    return a[col - 1] + (b[col - 1] - a[col - 1]) * (t - t0) / (t1 - t0)
for name, reqs in (("patch", patch), ("put", put)):
    if reqs and len(samples) >= 2:
        _, _, t0, t1 = max(reqs)
        rec[f"{name}_msr_cpu"] = round(at(t1, 1) - at(t0, 1), 3)
        rec[f"{name}_moto_cpu"] = round(at(t1, 2) - at(t0, 2), 3)
blobs = int(args["blobs"])
errors = []
if any(int(s) >= 500 for s in statuses):
    errors.append(f"5xx answers: {statuses}")
if rec["op"] == "push":
    if len(put) != blobs or any(x[1] != 201 for x in put):
        errors.append(f"{len(put)} upload PUTs ({[x[1] for x in put]}), want {blobs} x 201")
else:
    want = "307" if rec["store"] == "s3" else "200"
    if gets.get(want, 0) != blobs or sum(gets.values()) != blobs:
        errors.append(f"blob GETs by status {gets}, want {blobs} x {want}")
    if rec["store"] == "s3":
        mlines = open(args["moto_log"], errors="replace").read().splitlines()[int(args["moto_from"]):]
        served = sum(1 for l in mlines if re.search(r'"GET /[^/ ]+/blobs/sha256/\S+ HTTP/1\.[01]" 200 ', l))
        rec["moto_blob_gets"] = served
        if served != blobs:
            errors.append(f"moto's log shows {served} blob GETs answered 200, want {blobs}")
with open(out, "a") as f:
    f.write(json.dumps(rec) + "\n")
if errors:
    print("; ".join(errors))
    sys.exit(1)
PY

sub() { awk -v a="$1" -v b="$2" 'BEGIN{ printf "%.3f\n", b - a }'; }

RECORDS="$BENCH_TMP/records.jsonl"
RUN_ID=$(date +%H%M%S)-$$
# copy DEP IMG ROUND push|pull [set]: one timed skopeo copy with its measurements
copy() {
  local d=$1 img=$2 r=$3 op=$4 set=${5:-main} repo ref creds src dst from mfrom=0 logf="$BENCH_TMP/copy.log"
  local t0 t1 c0 c1 m0=0 m1=0 b0 b1 k0 k1 load nblobs msg moto=${MOTO[$1]:-} idle_sum idle_max cpu_pid
  repo="admin/s3b-$img-$RUN_ID-$set-r$r"; ref="docker://${HOSTPORT[$d]}/$repo:v1"
  nblobs=$(($(wc -l <"$BENCH_TMP/img-$img.layers") + 1))   # layers + config
  if [ "$op" = push ]; then
    creds=(--dest-tls-verify=false --dest-creds "admin:${PW[$d]}")
    src="oci:$BENCH_TMP/img-$img:v1"; dst=$ref
  else
    rm -rf "$BENCH_TMP/pull"
    creds=(--src-tls-verify=false --src-creds "admin:${PW[$d]}")
    src=$ref; dst="$DEST:$BENCH_TMP/pull"; [ "$DEST" = dir ] || dst+=":v1"
  fi
  sync
  from=$(wc -l <"${ALOG[$d]}")
  [ -z "$moto" ] || mfrom=$(wc -l <"${MOTO_LOG[$d]}")
  read -r idle_sum idle_max < <(tree_rss "${WEB_PID[$d]}")
  start_rss msr "${WEB_PID[$d]}"
  # moto grows to GiBs, and reading a big process's smaps_rollup (the sampler's PSS) costs
  # CPU: 20 samples/s on a 2 GiB process take ~2/3 of a core. Twice a second for moto.
  [ -z "$moto" ] || RSS_INTERVAL=0.5 start_rss moto "$moto"
  # every 0.1 s: time, CPU s of MSR's tree, of moto; with the access log's request times this
  # splits MSR's and moto's CPU between the upload's PATCH and its completing PUT
  "$PYTHON" "$BENCH_DIR/proctree.py" cpu-log "$BENCH_TMP/cpu.txt" "${WEB_PID[$d]}" $moto &
  cpu_pid=$!; BENCH_PIDS+=("$cpu_pid")
  sleep 0.3   # the samplers' first sample: the idle size
  load=$(cut -d' ' -f1 /proc/loadavg)
  c0=$(tree_cpu "${WEB_PID[$d]}"); [ -z "$moto" ] || m0=$(tree_cpu "$moto"); b0=$(machine_busy_cpu)
  children_cpu k0
  t0=$EPOCHREALTIME
  if ! skopeo copy "${creds[@]}" "$src" "$dst" >"$logf" 2>&1; then
    cat "$logf" >&2; die "$d: skopeo copy $src $dst failed"
  fi
  t1=$EPOCHREALTIME
  children_cpu k1
  b1=$(machine_busy_cpu); c1=$(tree_cpu "${WEB_PID[$d]}"); [ -z "$moto" ] || m1=$(tree_cpu "$moto")
  stop_rss msr; [ -z "$moto" ] || stop_rss moto
  sleep 0.2   # the last access lines, and a CPU sample after them
  stop_pid "$cpu_pid" 5; forget_pid "$cpu_pid"
  if [ "$op" = push ] && grep -qiE 'skipped|already exists' "$logf"; then
    cat "$logf" >&2; die "$d: skopeo reused blobs instead of pushing them"
  fi
  if [ "$op" = pull ]; then check_pulled "$BENCH_TMP/pull" "$BENCH_TMP/img-$img.layers"; rm -rf "$BENCH_TMP/pull"; fi
  msg=$("$PYTHON" "$BENCH_TMP/record.py" "$RECORDS" set="$set" dep="$d" store="${STORE[$d]}" part="${PART[$d]:-0}" \
        img="$img" round="$r" op="$op" s="$(sub "$t0" "$t1")" msr_cpu="$(sub "$c0" "$c1")" \
        moto_cpu="$(sub "$m0" "$m1")" skopeo_cpu="$(sub "$k0" "$k1")" busy_cpu="$(sub "$b0" "$b1")" \
        load="$load" idle_sum_kb="$idle_sum" idle_max_kb="$idle_max" cpu="$BENCH_TMP/cpu.txt" rss_msr="$BENCH_TMP/rss-msr.json" ${moto:+rss_moto="$BENCH_TMP/rss-moto.json"} \
        log="${ALOG[$d]}" from="$from" moto_log="${MOTO_LOG[$d]:-}" moto_from="$mfrom" blobs="$nblobs") \
    || die "$d $op $img: $msg"
  rm -f "$BENCH_TMP"/rss-msr.json "$BENCH_TMP"/rss-moto.json
  log "$set r$r $d $img: $op $(sub "$t0" "$t1") s (MSR CPU $(sub "$c0" "$c1") s${moto:+, moto CPU $(sub "$m0" "$m1") s})"
}

warm_up() {  # untimed push + pull of a tiny image, twice: token caches, boto3 clients, first requests
  local d=$1 i
  for i in 1 2; do
  mkimage_layout tiny --layers 3 --size-mb 0.1
  skopeo copy --dest-tls-verify=false --dest-creds "admin:${PW[$d]}" "oci:$BENCH_TMP/img-tiny:v1" \
    "docker://${HOSTPORT[$d]}/admin/warmup$i:v1" >"$BENCH_TMP/warm.log" 2>&1 || { cat "$BENCH_TMP/warm.log" >&2; die "$d: warm-up push failed"; }
  rm -rf "$BENCH_TMP/warm"
  skopeo copy --src-tls-verify=false --src-creds "admin:${PW[$d]}" "docker://${HOSTPORT[$d]}/admin/warmup$i:v1" \
    "oci:$BENCH_TMP/warm:v1" >"$BENCH_TMP/warm.log" 2>&1 || { cat "$BENCH_TMP/warm.log" >&2; die "$d: warm-up pull failed"; }
  rm -rf "$BENCH_TMP/warm"
  done
}

# -- run ---------------------------------------------------------------------------------
busy_share() {  # the machine's busy CPU share (%) over 5 s
  local a b
  a=$(machine_busy_cpu); sleep 5; b=$(machine_busy_cpu)
  awk -v a="$a" -v b="$b" -v n="$(nproc)" 'BEGIN{ printf "%.0f\n", 100 * (b - a) / (5 * n) }'
}
BUSY_START=$(busy_share)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "machine ${BUSY_START} % busy over 5 s before the start (load average $LOAD_START)"
T_START=$SECONDS
start_deployment fs fs
start_deployment s3 s3 16
warm_up fs; warm_up s3

for r in $(seq "$ROUNDS"); do
  log "round $r/$ROUNDS: making images (1 x $SIZE_MB MiB; $LAYERS x $LAYER_MB MiB), load $(cut -d' ' -f1-3 /proc/loadavg)"
  mkimage_layout big --layers 1 --size-mb "$SIZE_MB"
  mkimage_layout multi --layers "$LAYERS" --size-mb "$LAYER_MB"
  if [ $((r % 2)) = 1 ]; then order=(fs s3); else order=(s3 fs); fi
  for d in "${order[@]}"; do
    for img in big multi; do
      copy "$d" "$img" "$r" push
      copy "$d" "$img" "$r" pull
    done
  done
done
stop_deployment fs; stop_deployment s3

for p in $PART_SIZES_MB; do
  d="s3p$p"
  start_deployment "$d" s3 "$p"
  warm_up "$d"
  for img in big multi; do
    copy "$d" "$img" 1 push parts
    copy "$d" "$img" 1 pull parts
  done
  stop_deployment "$d"
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$((SECONDS - T_START))

# -- report ------------------------------------------------------------------------------
VENV_PY=$(head -n 1 "$MOTO_BIN" | sed -n 's/^#! *//p' | awk '{print $1}')
VERSIONS=$("$VENV_PY" -c 'import moto, boto3; print(f"moto {moto.__version__}, boto3 {boto3.__version__}")' 2>/dev/null || echo "moto ?")
DIRTY=$(cd "$REPO_ROOT" && git status --porcelain -- msr 2>/dev/null | wc -l)
TREE="$(cd "$REPO_ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
[ "$DIRTY" = 0 ] || TREE+=" + uncommitted changes in $DIRTY file(s) under msr/"
cat >"$BENCH_TMP/meta.json" <<EOF
{"size_mb": $SIZE_MB, "layers": $LAYERS, "layer_mb": $LAYER_MB, "rounds": $ROUNDS, "dest": "$DEST",
 "gzip_level": $GZIP_LEVEL, "db": "$MSR_DB", "workers": "${MSR_WORKERS:-${MSR_WEB_WORKERS:-2}}",
 "threads": "${MSR_THREADS:-${MSR_WEB_THREADS:-8}}", "fsync": "${MSR_STORAGE_FSYNC:-true}",
 "machine": "$(host_summary)", "skopeo": "$(skopeo --version | awk '{print $3}')", "versions": "$VERSIONS",
 "tree": "$TREE", "ts": "$TS", "busy_start": "$BUSY_START", "load_start": "$LOAD_START", "load_end": "$LOAD_END", "elapsed_s": $ELAPSED,
 "command": "bench/s3.sh${ORIG_ARGS:+ $ORIG_ARGS}"}
EOF
cat >"$BENCH_TMP/report.py" <<'PY'
import json, statistics, sys
meta = json.load(open(sys.argv[1]))
recs = [json.loads(l) for l in open(sys.argv[2])]
MB = 1024.0
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def f(v, d=2):
    return "n/a" if v is None else f"{v:.{d}f}"
def sel(set_="main", **kw):
    return [r for r in recs if r["set"] == set_ and all(r.get(k) == v for k, v in kw.items())]
def m(rs, fn):
    vals = []
    for r in rs:
        try:
            vals.append(fn(r))
        except (KeyError, TypeError):
            pass
    return med(vals)
def rss(r, key, field):
    return r[key][field] / MB
def grow_sum(r):
    return (r["rss_msr"]["peak_total_kb"] - r["idle_sum_kb"]) / MB
def grow_max(r):
    return (r["rss_msr"]["peak_max_kb"] - r["idle_max_kb"]) / MB
def maxput(r):
    return max(r["put_ms"]) / 1000
def maxpatch(r):
    return max(r["patch_ms"]) / 1000
def others(r):
    return r["busy_cpu"] - r["msr_cpu"] - r["moto_cpu"] - r["skopeo_cpu"]
def ratio(a, b):
    return "n/a" if a is None or b in (None, 0) else f"{a / b:.2f}x"

big = f"1 x {meta['size_mb']:g} MiB"
multi = f"{meta['layers']} x {meta['layer_mb']:g} MiB"
imgs = [("big", big), ("multi", multi)]
stores = [("fs", "filesystem"), ("s3", "S3 (moto), 16 MiB parts")]
size_mib = {"big": meta["size_mb"], "multi": meta["layers"] * meta["layer_mb"]}
R = meta["rounds"]
o = []
w = o.append
w(f"## MSR on the filesystem store vs on S3 (moto's emulator), skopeo {meta['skopeo']}")
w("")
w(f"- machine: {meta['machine']}; {meta['busy_start']} % busy over 5 s before the start; load average "
  f"{meta['load_start']} at the start, {meta['load_end']} at the end; {meta['elapsed_s']} s in all")
w(f"- MSR: `msr serve`, {meta['workers']} workers x {meta['threads']} threads, {meta['db']}, fsync {meta['fsync']}, "
  f"access log on; tree {meta['tree']}")
w(f"- S3: {meta['versions']}; moto_server on 127.0.0.1, one per S3 deployment; path-style; "
  "MSR_S3_REDIRECT=true (pulls follow a 307 to a presigned moto URL)")
w(f"- images: {big} and {multi}, random data, gzip level {meta['gzip_level']}, new blobs each round; pulls into "
  f"`{meta['dest']}:`; medians of {R} round(s), fs/s3 order alternating")
w(f"- command: `{meta['command']}`")
w("")
w("### Wall time, seconds")
w("")
w(f"| MSR store | push {big} | pull {big} | push {multi} | pull {multi} |")
w("|---|---:|---:|---:|---:|")
T = {}
for d, label in stores:
    row = []
    for img, _ in imgs:
        for op in ("push", "pull"):
            T[d, img, op] = m(sel(dep=d, img=img, op=op), lambda r: r["s"])
            row.append(f(T[d, img, op]))
    w(f"| {label} | " + " | ".join(row) + " |")
w("| S3 / filesystem | " + " | ".join(ratio(T["s3", i, op], T["fs", i, op]) for i, _ in imgs for op in ("push", "pull")) + " |")
w("")
w("### Push: where the time goes (medians)")
w("")
w("PATCH = the layer's bytes arriving (S3: parts sent to the bucket as they fill); PUT = completing the "
  "upload (filesystem: fsync + rename; S3: complete the multipart upload, server-side copy to the "
  "digest's key, delete the upload's objects). Durations from MSR's access log, the longest PATCH and "
  "PUT of the push (for the one-layer image: the layer's). CPU seconds: over the whole push, and within "
  "the PATCH / PUT (0.1 s samples).")
w("")
w("| image | MSR store | push s | MiB/s | PATCH s | PUT s | MSR CPU s | MSR CPU in PATCH / PUT | moto CPU s | moto CPU in PATCH / PUT | skopeo CPU s |")
w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for img, il in imgs:
    for d, label in stores:
        rs = sel(dep=d, img=img, op="push")
        s = m(rs, lambda r: r["s"])
        s3 = d != "fs"
        w(f"| {il} | {label} | {f(s)} | {f(size_mib[img] / s if s else None, 0)} | {f(m(rs, maxpatch))} | {f(m(rs, maxput))} "
          f"| {f(m(rs, lambda r: r['msr_cpu']))} | {f(m(rs, lambda r: r['patch_msr_cpu']))} / {f(m(rs, lambda r: r['put_msr_cpu']))} "
          f"| {f(m(rs, lambda r: r['moto_cpu'])) if s3 else ''} "
          f"| {(f(m(rs, lambda r: r['patch_moto_cpu'])) + ' / ' + f(m(rs, lambda r: r['put_moto_cpu']))) if s3 else ''} "
          f"| {f(m(rs, lambda r: r['skopeo_cpu']))} |")
w("")
w("### Push: memory (medians, MiB)")
w("")
w("MSR's process tree (gunicorn master + 2 workers), VmRSS sampled every 50 ms during the push: idle = "
  "just before it; peak of the sum over the tree and its growth over idle; peak of the largest single "
  "process and its growth over the largest idle process (an upload runs in one worker, so this is "
  "the memory one worker held for its uploads); peak PSS sum. moto (sampled every 0.5 s): idle -> peak.")
w("")
w("| image | MSR store | idle sum | peak sum | growth | largest process peak | growth | PSS peak | moto RSS idle -> peak |")
w("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for img, il in imgs:
    for d, label in stores:
        rs = sel(dep=d, img=img, op="push")
        moto = (f"{f(m(rs, lambda r: rss(r, 'rss_moto', 'first_total_kb')), 0)} -> "
                f"{f(m(rs, lambda r: rss(r, 'rss_moto', 'peak_total_kb')), 0)}") if d != "fs" else ""
        w(f"| {il} | {label} | {f(m(rs, lambda r: r['idle_sum_kb'] / MB), 0)} "
          f"| {f(m(rs, lambda r: rss(r, 'rss_msr', 'peak_total_kb')), 0)} | {f(m(rs, grow_sum), 0)} "
          f"| {f(m(rs, lambda r: rss(r, 'rss_msr', 'peak_max_kb')), 0)} | {f(m(rs, grow_max), 0)} "
          f"| {f(m(rs, lambda r: rss(r, 'rss_msr', 'peak_pss_kb')), 0)} | {moto} |")
w("")
w("### Pull (medians)")
w("")
w("Blob GETs as MSR answered them (its access log); for S3 each 307 was followed to moto, whose log "
  "shows as many presigned GETs answered 200 (checked).")
w("")
w("| image | MSR store | pull s | MiB/s | blob GETs answered by MSR | MSR CPU s | moto CPU s | skopeo CPU s | MSR largest process MiB | moto peak RSS MiB |")
w("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
for img, il in imgs:
    for d, label in stores:
        rs = sel(dep=d, img=img, op="pull")
        s = m(rs, lambda r: r["s"])
        gets = ", ".join(f"{v} x {k}" for k, v in sorted(rs[-1]["blob_gets"].items())) if rs else ""
        w(f"| {il} | {label} | {f(s)} | {f(size_mib[img] / s if s else None, 0)} | {gets} | {f(m(rs, lambda r: r['msr_cpu']))} "
          f"| {f(m(rs, lambda r: r['moto_cpu'])) if d != 'fs' else ''} | {f(m(rs, lambda r: r['skopeo_cpu']))} "
          f"| {f(m(rs, lambda r: rss(r, 'rss_msr', 'peak_max_kb')), 0)} "
          f"| {f(m(rs, lambda r: rss(r, 'rss_moto', 'peak_total_kb')), 0) if d != 'fs' else ''} |")
w("")
parts = sorted({r["part"] for r in recs if r["set"] == "parts"})
if parts:
    w("### MSR_S3_PART_SIZE (S3 only)")
    w("")
    w("16 MiB: the medians above; other sizes: one push and pull of the last round's images each, on a "
      "fresh deployment with its own moto (single runs). Growth: MiB over idle, of the largest MSR "
      "process (the worker that took the upload) and of the tree's sum.")
    w("")
    w(f"| part size | runs | push {big} s | PUT s | moto CPU in PUT | growth largest / sum | largest / part size "
      f"| moto peak RSS MiB | push {multi} s | growth largest / sum | pull {big} s |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [(16, sel(dep="s3", img="big", op="push"), sel(dep="s3", img="multi", op="push"), sel(dep="s3", img="big", op="pull"))]
    for p in parts:
        rows.append((int(p), sel("parts", part=p, img="big", op="push"), sel("parts", part=p, img="multi", op="push"),
                     sel("parts", part=p, img="big", op="pull")))
    for p, bp, mp, bl in sorted(rows, key=lambda x: x[0]):
        w(f"| {p} MiB | {len(bp)} | {f(m(bp, lambda r: r['s']))} | {f(m(bp, maxput))} | {f(m(bp, lambda r: r['put_moto_cpu']))} "
          f"| {f(m(bp, grow_max), 0)} / {f(m(bp, grow_sum), 0)} | {f(m(bp, lambda r: grow_max(r) / p), 1)} "
          f"| {f(m(bp, lambda r: rss(r, 'rss_moto', 'peak_total_kb')), 0)} | {f(m(mp, lambda r: r['s']))} "
          f"| {f(m(mp, grow_max), 0)} / {f(m(mp, grow_sum), 0)} | {f(m(bl, lambda r: r['s']))} |")
    w("")
w("### Per copy")
w("")
w("Seconds, then in brackets: CPU seconds taken by other work on the machine during the copy (the "
  "machine's busy time minus MSR, moto and skopeo; includes the samplers and kernel writeback) and "
  "the 1-minute load average when the copy started.")
w("")
by = {}
for r in recs:
    by.setdefault((r["set"], r["dep"], r["img"], r["op"]), []).append(
        f"{r['s']:.2f} ({max(others(r), 0.0):.1f}, {r['load']:.2f})")
for (set_, d, img, op), vals in by.items():
    w(f"- {d} {dict(imgs)[img]} {op}: " + "; ".join(vals))
w("")
print("\n".join(o))
PY
"$PYTHON" "$BENCH_TMP/report.py" "$BENCH_TMP/meta.json" "$RECORDS" >"$BENCH_TMP/report.md" || die "report failed"
if [ "$SAVE" = 1 ]; then
  { echo "# MSR benchmark: S3 storage, $TS"; echo; cat "$BENCH_TMP/report.md"; } >"$RES"
  cp "$RECORDS" "${RES%.md}.jsonl"
  log "results: $RES"
fi
cat "$BENCH_TMP/report.md"
