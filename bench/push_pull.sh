#!/usr/bin/env bash
# Push and pull with skopeo, MSR side by side with CNCF Distribution (docker-registry),
# and the servers' peak memory during the run.
#
# Two synthetic images (random, incompressible gzip layers from mkimage.py):
#   big    one layer of --size-mb MiB (default 1024: "1GiB")
#   multi  --layers layers of --layer-mb MiB each (default 10 x 50 MiB, ~0.5 GiB)
# For each of --rounds rounds (default 3) both images are made afresh with a new seed,
# then for each registry (order alternates between rounds):
#   push  skopeo copy oci:<layout>:v1 docker://<registry>/<ns>/<repo>:v1
#   pull  skopeo copy docker://<registry>/<ns>/<repo>:v1 dir:<scratch>   (same disk)
# timed as wall clock. Every round uses a new repository name AND new blobs: skopeo's
# blob-info cache would otherwise mount already-pushed blobs from the previous round's
# repository instead of uploading them (the run fails if skopeo reports a skipped blob).
# `sync` runs before each timed copy so that one copy does not pay for the previous
# one's write-back. Pulled layers are checked (names = digests, sizes) and deleted.
# A background sampler reads VmRSS of each server's process tree every 50 ms
# (rss_sampler.py): peak of the sum over the tree and peak of the largest process.
# Figures are medians over the rounds. MSR is used with token auth (skopeo logs in
# with basic credentials and gets a bearer token for each copy); docker-registry runs
# without auth.
#
# Usage: ./push_pull.sh [--size-mb 1024] [--layers 10] [--layer-mb 50] [--rounds 3]
#          [--gzip-level 0] [common options, see below]
# Needs: bash, python3, curl, skopeo, docker-registry; ~3x (size + layers x layer-mb)
# free in the scratch dir per round (images, both registries' storage, one pull).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

SIZE_MB=1024; LAYERS=10; LAYER_MB=50; ROUNDS=3; GZIP_LEVEL=0
while [ $# -gt 0 ]; do
  case $1 in
    --size-mb) SIZE_MB=$2; shift 2;;
    --layers) LAYERS=$2; shift 2;;
    --layer-mb) LAYER_MB=$2; shift 2;;
    --rounds) ROUNDS=$2; shift 2;;
    --gzip-level) GZIP_LEVEL=$2; shift 2;;
    -h|--help) usage; exit 0;;
    *) common_opt "$@" || die "unknown argument $1 (see --help)"; shift "$COMMON_SHIFT";;
  esac
done
case $GZIP_LEVEL in 0|1) ;; *) log "note: --gzip-level $GZIP_LEVEL makes image generation slower, not the copies";; esac
need "$PYTHON" curl skopeo "$REGISTRY_BIN"

bench_mktemp
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

RP=$(free_port); start_registry "$RP" "$BENCH_TMP/registry"
DIST_LABEL="Distribution $(registry_version) (docker-registry)"
setup_msr

# the servers' memory over the whole run (before the first and after the last copy)
[ -n "$MSR_PID" ] && start_rss msr "$MSR_PID"
start_rss dist "$REGISTRY_PID"

size_label() {  # MiB -> "1GiB" / "64MiB"
  awk -v m="$1" 'BEGIN{ if (m % 1024 == 0) printf "%dGiB", m/1024; else printf "%gMiB", m }'
}
BIG_LABEL=$(size_label "$SIZE_MB")
MULTI_LABEL="${LAYERS}-layer"
RUN_ID=$(date +%H%M%S)-$$

# copy_timed OUTVAR LOG skopeo-args... : run skopeo copy, store wall seconds in OUTVAR
copy_timed() {
  local __out=$1 logf=$2 t0 t1; shift 2
  sync
  t0=$EPOCHREALTIME
  if ! skopeo copy "$@" >"$logf" 2>&1; then
    cat "$logf" >&2; die "skopeo copy $* failed"
  fi
  t1=$EPOCHREALTIME
  printf -v "$__out" '%s' "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')"
}

check_pulled() {  # check_pulled DIR LAYERSFILE
  local hex size got
  [ -s "$1/manifest.json" ] || die "pull into $1 has no manifest.json"
  while read -r hex size; do
    got=$(stat -c %s "$1/$hex" 2>/dev/null || echo missing)
    [ "$got" = "$size" ] || die "pulled layer $hex: size $got, want $size"
  done <"$2"
}

declare -A VALS   # VALS[reg,metric] = "v1 v2 ..."
REGS=(msr dist)
for r in $(seq "$ROUNDS"); do
  log "round $r/$ROUNDS: making images ($BIG_LABEL single layer; $LAYERS x $LAYER_MB MiB)"
  mkimage_layout big --layers 1 --size-mb "$SIZE_MB"
  mkimage_layout multi --layers "$LAYERS" --size-mb "$LAYER_MB"
  if [ $((r % 2)) = 1 ]; then order=(msr dist); else order=(dist msr); fi
  for reg in "${order[@]}"; do
    if [ "$reg" = msr ]; then
      host=$MSR_HOSTPORT; ns=$MSR_USER; dcred=(--dest-creds "$MSR_CREDS"); scred=(--src-creds "$MSR_CREDS")
    else
      host=$REGISTRY_HOSTPORT; ns=admin; dcred=(); scred=()
    fi
    for img in big multi; do
      repo="$ns/pp-$img-$RUN_ID-r$r"
      copy_timed tpush "$BENCH_TMP/push.log" --dest-tls-verify=false "${dcred[@]}" \
        "oci:$BENCH_TMP/img-$img:v1" "docker://$host/$repo:v1"
      if grep -qiE 'skipped|already exists' "$BENCH_TMP/push.log"; then
        cat "$BENCH_TMP/push.log" >&2; die "$reg: skopeo reused blobs instead of pushing them"
      fi
      rm -rf "$BENCH_TMP/pull"
      copy_timed tpull "$BENCH_TMP/pull.log" --src-tls-verify=false "${scred[@]}" \
        "docker://$host/$repo:v1" "dir:$BENCH_TMP/pull"
      check_pulled "$BENCH_TMP/pull" "$BENCH_TMP/img-$img.layers"
      rm -rf "$BENCH_TMP/pull"
      VALS[$reg,push_$img]+="$tpush "
      VALS[$reg,pull_$img]+="$tpull "
      log "round $r $reg $img: push ${tpush}s pull ${tpull}s"
    done
  done
done
rm -rf "$BENCH_TMP"/img-*

[ -n "$MSR_PID" ] && stop_rss msr
stop_rss dist

med() { printf '%s\n' ${VALS[$1]} | median; }
fmt_s() { awk -v v="$1" 'BEGIN{printf "%.2f", v}'; }
declare -A M
for reg in "${REGS[@]}"; do
  for k in push_big pull_big push_multi pull_multi; do M[$reg,$k]=$(med "$reg,$k"); done
done
for reg in msr dist; do
  M[$reg,rss_total]=$(rss_field $reg peak_total_kb); M[$reg,rss_max]=$(rss_field $reg peak_max_kb)
  M[$reg,pss]=$(rss_field $reg peak_pss_kb)
done

echo "## push/pull with skopeo ($(skopeo --version | awk '{print $3}'))"
echo
echo "Images: $BIG_LABEL = 1 layer of $SIZE_MB MiB; $MULTI_LABEL = $LAYERS x $LAYER_MB MiB;"
echo "random data, gzip level $GZIP_LEVEL layers. Wall time of \`skopeo copy oci:... docker://...\` (push) and"
echo "\`skopeo copy docker://... dir:...\` (pull, same disk), median of $ROUNDS rounds, fresh blobs and"
echo "repository each round. Peak RSS: VmRSS of the server's process tree sampled every 50 ms over"
echo "the whole run; total = sum over the tree (counts pages shared by forked workers once per"
echo "process), max proc = largest single process; PSS total = sum of Pss over the tree (shared"
echo "pages divided among their sharers: the real footprint). MB = MiB. Machine: $(host_summary)."
echo
echo "| registry | push $BIG_LABEL s | pull $BIG_LABEL s | push $MULTI_LABEL s | pull $MULTI_LABEL s | peak RSS total MB | peak RSS max proc MB | peak PSS total MB |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for reg in "${REGS[@]}"; do
  if [ "$reg" = msr ]; then label=$MSR_LABEL; else label=$DIST_LABEL; fi
  echo "| $label | $(fmt_s "${M[$reg,push_big]}") | $(fmt_s "${M[$reg,pull_big]}") | $(fmt_s "${M[$reg,push_multi]}") | $(fmt_s "${M[$reg,pull_multi]}") | ${M[$reg,rss_total]} | ${M[$reg,rss_max]} | ${M[$reg,pss]} |"
done
printf '| MSR / Distribution |'
for k in push_big pull_big push_multi pull_multi rss_total rss_max pss; do printf ' %s |' "$(ratio "${M[msr,$k]}" "${M[dist,$k]}")"; done
echo
echo
echo "Per-round seconds (push/pull):"
for reg in "${REGS[@]}"; do
  for img in big multi; do
    if [ "$img" = big ]; then il=$BIG_LABEL; else il=$MULTI_LABEL; fi
    echo "- $reg $il: push ${VALS[$reg,push_$img]% }; pull ${VALS[$reg,pull_$img]% }"
  done
done
echo "- idle RSS before the run (total MB): msr $(rss_field msr first_total_kb), distribution $(rss_field dist first_total_kb);" \
     "processes in tree: msr $(rss_field msr max_procs), distribution $(rss_field dist max_procs)"
echo
echo "Auth: MSR with token auth (skopeo gets a bearer token with basic credentials per copy);"
echo "docker-registry without auth. MSR fsyncs blobs before publishing them (MSR_STORAGE_FSYNC,"
echo "default on); docker-registry does not fsync."
echo
