#!/usr/bin/env bash
# Run the four benchmarks one after the other and write the results as markdown to
# bench/results/<UTC timestamp>.md (the scripts' progress log goes next to it as .log).
#
#   push_pull.sh        skopeo push/pull, 1 GiB single-layer and 10 x 50 MiB images, peak RSS
#   blob_throughput.sh  200 MiB blob GET, 1/4/8 curl clients, nginx as the ceiling
#   manifest_rps.sh     wrk on GET manifest by tag, 1 and 16 connections
#   region.sh           cache node on local disk / on a shared S3 store (moto) / a region of
#                       two nodes behind nginx: hit MiB/s, first-byte times, a herd's upstream bytes
#
# Usage: ./run_all.sh [--quick] [--pp 'ARGS'] [--blob 'ARGS'] [--manifest 'ARGS'] [--region 'ARGS']
#          [--out DIR] [common options, passed to every script]
#   --quick        small sizes and short runs (a smoke test, ~1 min)
#   --pp/--blob/--manifest/--region  extra arguments for one script, e.g. --manifest '--conns "1 16 64"'
#   --out DIR      where results go (default bench/results)
# Common options (--msr-bin, --msr-url/--msr-creds/--msr-pid, --db, --pg-url, ...) are
# described in each script's --help. Every script starts (and stops) its own MSR and
# docker-registry unless --msr-url is given (region.sh always starts its own MSR and is
# skipped with --msr-url). Default run: about 8-11 minutes on 2 cores.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

ORIG_ARGS="$*"
QUICK=0; PP_ARGS=""; BLOB_ARGS=""; MAN_ARGS=""; REGION_ARGS=""; OUT="$BENCH_DIR/results"; COMMON=()
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1; shift;;
    --pp) PP_ARGS=$2; shift 2;;
    --blob) BLOB_ARGS=$2; shift 2;;
    --manifest) MAN_ARGS=$2; shift 2;;
    --region) REGION_ARGS=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    -h|--help) usage; exit 0;;
    *) common_opt "$@" || die "unknown argument $1 (see --help)"; COMMON+=("${@:1:$COMMON_SHIFT}"); shift "$COMMON_SHIFT";;
  esac
done

if [ "$QUICK" = 1 ]; then
  PP_ARGS="--size-mb 64 --layers 3 --layer-mb 8 --rounds 1 $PP_ARGS"
  BLOB_ARGS="--size-mb 32 --rounds 2 $BLOB_ARGS"
  MAN_ARGS="--duration 3 $MAN_ARGS"
  REGION_ARGS="--layer-mb 8 --runs 2 --herd 8 --cold 1 --ttfb-reps 2 $REGION_ARGS"
fi

mkdir -p "$OUT"
TS=$(date -u +%Y%m%dT%H%M%SZ)
RES="$OUT/$TS.md"; LOGF="$OUT/$TS.log"
# the scripts' arguments: word-split the --pp/--blob/--manifest strings like a shell would
split_args() { eval "ARGS=($1)"; }

{
  echo "# MSR benchmark results, $TS"
  echo
  echo "- machine: $(host_summary)"
  echo "- msr: ${MSR_URL_ARG:-${MSR_BIN:-not found}}${MSR_URL_ARG:+ (running instance)}"
  echo "- tools: skopeo $(skopeo --version 2>/dev/null | awk '{print $3}'), docker-registry $(registry_version)," \
       "$("$NGINX_BIN" -v 2>&1 | sed 's|.*: ||'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}')"
  echo "- command: $0 $ORIG_ARGS"
  [ "$QUICK" = 1 ] && echo "- QUICK mode: small sizes, not representative"
  echo
} >"$RES"

FAILED=()
run() {  # run NAME SCRIPT ARGSTRING
  local name=$1 script=$2 ARGS=()
  split_args "$3"
  log "=== $name: $script ${ARGS[*]} ${COMMON[*]}"
  local t0=$SECONDS
  if "$BENCH_DIR/$script" "${ARGS[@]}" "${COMMON[@]}" >"$RES.part" 2> >(tee -a "$LOGF" >&2); then
    cat "$RES.part" >>"$RES"
    echo "(\`$script${ARGS[*]:+ ${ARGS[*]}}\`: $((SECONDS - t0)) s)" >>"$RES"
    echo >>"$RES"
  else
    FAILED+=("$name")
    { echo "## $name: FAILED"; echo; echo "\`$script${ARGS[*]:+ ${ARGS[*]}}\` failed after $((SECONDS - t0)) s; see $(basename "$LOGF")."; echo; } >>"$RES"
  fi
  rm -f "$RES.part"
}

run push_pull push_pull.sh "$PP_ARGS"
run blob_throughput blob_throughput.sh "$BLOB_ARGS"
run manifest_rps manifest_rps.sh "$MAN_ARGS"
if [ -n "$MSR_URL_ARG" ]; then
  { echo "## region: skipped"; echo; echo "region.sh starts its own MSR (it registers the nodes' cache there); not run with --msr-url."; echo; } >>"$RES"
else
  run region region.sh "--no-save $REGION_ARGS"
fi

log "results: $RES"
cat "$RES"
if [ ${#FAILED[@]} -gt 0 ]; then die "failed: ${FAILED[*]}"; fi
