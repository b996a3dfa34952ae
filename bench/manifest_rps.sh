#!/usr/bin/env bash
# Manifest GET rate: wrk on GET /v2/<ns>/bench/manifests/v1, MSR side by side with CNCF
# Distribution (docker-registry).
#
# A small image (3 tiny layers, mkimage.py) is pushed to both with skopeo. wrk then asks
# for the manifest by tag with OCI + Docker v2 Accept headers, --duration seconds per
# connection count (--conns), and reports requests/s, p50 and p99 latency.
#   MSR            'Authorization: Bearer <token>' (pull token for the repository, fetched
#                  from /auth/token just before each wrk run), so every request pays for
#                  token verification, the permission check and the tag lookup
#   Distribution   docker-registry without auth (filesystem, tag lookup each time)
#   nginx          with --with-nginx: the same manifest bytes as a static file (ceiling)
# Any non-2xx answer (counted by wrk_status.lua) or socket error fails the run. wrk,
# the servers and the database share the machine's cores.
#
# Usage: ./manifest_rps.sh [--duration 8] [--conns "1 16"] [--threads 2] [--with-nginx]
#          [--db sqlite|postgres] [common options, see below]
#   e.g. --conns "1 16 64"; --db postgres runs the MSR started here on a scratch
#   PostgreSQL database instead of SQLite.
# Needs: bash, python3, curl, skopeo, wrk, docker-registry (nginx with --with-nginx,
# psql with --db postgres).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

DURATION=8; CONNS="1 16"; THREADS=2; WITH_NGINX=0
while [ $# -gt 0 ]; do
  case $1 in
    --duration) DURATION=$2; shift 2;;
    --conns) CONNS=$2; shift 2;;
    --threads) THREADS=$2; shift 2;;
    --with-nginx) WITH_NGINX=1; shift;;
    -h|--help) usage; exit 0;;
    *) common_opt "$@" || die "unknown argument $1 (see --help)"; shift "$COMMON_SHIFT";;
  esac
done
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 60 ] || die "--duration must be 1..60 s (tokens expire)"
need "$PYTHON" curl skopeo wrk "$REGISTRY_BIN"
[ "$WITH_NGINX" = 1 ] && need "$NGINX_BIN"
ACCEPT="Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

bench_mktemp
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

"$PYTHON" "$BENCH_DIR/mkimage.py" --layers 3 --size-mb 0.01 --out "$BENCH_TMP/img" --tag v1 \
  >"$BENCH_TMP/img.json" 2>/dev/null || die "mkimage.py failed"
MDIGEST=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifest_digest"])' "$BENCH_TMP/img.json")

RP=$(free_port); start_registry "$RP" "$BENCH_TMP/registry"
setup_msr
skopeo copy --quiet --dest-tls-verify=false "oci:$BENCH_TMP/img:v1" "docker://$REGISTRY_HOSTPORT/admin/bench:v1" \
  || die "push to docker-registry failed"
skopeo copy --quiet --dest-tls-verify=false --dest-creds "$MSR_CREDS" "oci:$BENCH_TMP/img:v1" \
  "docker://$MSR_HOSTPORT/$MSR_USER/bench:v1" || die "push to MSR failed"
MSR_SCOPE="repository:$MSR_USER/bench:pull"

NAMES=()
declare -A URL LABEL
if [ "$WITH_NGINX" = 1 ]; then
  mkdir -p "$BENCH_TMP/static"
  cp "$BENCH_TMP/img/blobs/sha256/${MDIGEST#sha256:}" "$BENCH_TMP/static/manifest.json"
  NP=$(free_port); start_nginx "$NP" "$BENCH_TMP/static"
  NAMES+=(nginx); URL[nginx]="http://127.0.0.1:$NP/manifest.json"; LABEL[nginx]="nginx (static file, ceiling)"
fi
NAMES+=(dist msr)
URL[dist]="http://$REGISTRY_HOSTPORT/v2/admin/bench/manifests/v1"; LABEL[dist]="Distribution $(registry_version) (docker-registry, no auth)"
URL[msr]="$MSR_URL/v2/$MSR_USER/bench/manifests/v1";             LABEL[msr]="$MSR_LABEL, bearer token"

auth_args() {  # auth_args TARGET -> AUTH array (a fresh token for MSR)
  AUTH=()
  if [ "$1" = msr ]; then AUTH=(-H "Authorization: Bearer $(msr_token "$MSR_SCOPE")"); fi
}

declare -A RPS P50 P99
for t in "${NAMES[@]}"; do
  u=${URL[$t]}
  auth_args "$t"
  got=$(curl -s -D "$BENCH_TMP/m.hdr" -o "$BENCH_TMP/m.out" -w '%{http_code}' -H "$ACCEPT" "${AUTH[@]}" "$u")
  [ "$got" = 200 ] || { cat "$BENCH_TMP/m.out" >&2; die "$t answered $got for GET $u"; }
  sum=$(sha256sum <"$BENCH_TMP/m.out" | cut -d' ' -f1)
  [ "sha256:$sum" = "$MDIGEST" ] || die "$t: manifest body is not $MDIGEST"
  if [ "$t" != nginx ]; then
    hd=$(tr -d '\r' <"$BENCH_TMP/m.hdr" | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')
    [ "$hd" = "$MDIGEST" ] || die "$t: Docker-Content-Digest '$hd', want $MDIGEST"
  fi
  log "$t: check GET ok ($(wc -c <"$BENCH_TMP/m.out") bytes, digest matches)"
  for c in $CONNS; do
    th=$THREADS; [ "$c" -lt "$th" ] && th=$c
    auth_args "$t"
    wrk -t "$th" -c "$c" -d "${DURATION}s" --timeout 30s -s "$BENCH_DIR/wrk_status.lua" \
      -H "$ACCEPT" "${AUTH[@]}" "$u" >"$BENCH_TMP/wrk.out" 2>&1 \
      || { cat "$BENCH_TMP/wrk.out" >&2; die "wrk failed"; }
    line=$(grep '^BENCH ' "$BENCH_TMP/wrk.out") || { cat "$BENCH_TMP/wrk.out" >&2; die "no result line from wrk"; }
    declare -A W=()
    for kv in ${line#BENCH }; do W[${kv%%=*}]=${kv#*=}; done
    errs=$((W[errors_connect] + W[errors_read] + W[errors_write] + W[errors_timeout]))
    if [ "${W[non2xx]}" != 0 ] || [ "$errs" != 0 ]; then
      cat "$BENCH_TMP/wrk.out" >&2
      die "$t c=$c: ${W[non2xx]} non-2xx answers (first: ${W[first_bad]}), $errs socket errors of ${W[requests]} requests"
    fi
    RPS[$t,$c]=$(awk -v n="${W[requests]}" -v d="${W[duration_us]}" 'BEGIN{printf "%.0f", n / (d / 1e6)}')
    P50[$t,$c]=$(awk -v v="${W[p50_us]}" 'BEGIN{printf "%.2f", v / 1000}')
    P99[$t,$c]=$(awk -v v="${W[p99_us]}" 'BEGIN{printf "%.2f", v / 1000}')
    log "$t c=$c: ${RPS[$t,$c]} req/s (${W[requests]} requests), p50 ${P50[$t,$c]} ms, p99 ${P99[$t,$c]} ms"
  done
done

echo "## manifest GET rate (wrk)"
echo
echo "GET /v2/<ns>/bench/manifests/v1 (by tag) with OCI + Docker v2 Accept headers; wrk $DURATION s per"
echo "point, threads = min($THREADS, connections); no non-2xx answers or socket errors (checked)."
echo "MSR requests carry a bearer token; docker-registry runs WITHOUT auth (no token check at all)."
echo "Machine: $(host_summary); wrk and the servers share the cores."
echo
printf '| registry |'; for c in $CONNS; do printf ' c=%s req/s | c=%s p99 ms |' "$c" "$c"; done; echo
printf '|---|'; for c in $CONNS; do printf -- '---:|---:|'; done; echo
for t in "${NAMES[@]}"; do
  printf '| %s |' "${LABEL[$t]}"
  for c in $CONNS; do printf ' %s | %s |' "${RPS[$t,$c]}" "${P99[$t,$c]}"; done
  echo
done
printf '| MSR / Distribution |'
for c in $CONNS; do printf ' %s | %s |' "$(ratio "${RPS[msr,$c]}" "${RPS[dist,$c]}")" "$(ratio "${P99[msr,$c]}" "${P99[dist,$c]}")"; done
echo
echo
printf 'p50 ms:'; for t in "${NAMES[@]}"; do for c in $CONNS; do printf ' %s c=%s %s;' "$t" "$c" "${P50[$t,$c]}"; done; done; echo
echo
