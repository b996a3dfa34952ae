#!/usr/bin/env bash
# Blob GET throughput: one large blob, C concurrent curl clients, aggregate MiB/s.
#
# All targets serve the same random, incompressible blob (one gzip layer from mkimage.py):
#   nginx            static file, sendfile on: the practical loopback ceiling
#   Distribution     docker-registry: GET /v2/admin/blob/blobs/<digest>, no auth
#   MSR              GET /v2/<user>/blob/blobs/<digest> with 'Authorization: Bearer <token>'
#                    (token from /auth/token, fetched before each batch, outside the timing)
# The image is pushed to both registries with skopeo. Each target first gets one GET
# whose body is checked against the digest. Then, per concurrency C (--conc), C curl
# clients each loop over --reps GETs (status 200 and full size checked); throughput =
# all bytes / wall time of the batch. Each batch is repeated --rounds times; the median
# is printed with the ratio to nginx at the same C.
#
# Usage: ./blob_throughput.sh [--size-mb 200] [--conc "1 4 8"] [--reps 2] [--rounds 5]
#          [common options, see below]
# Needs: bash, python3, curl, skopeo, docker-registry, nginx; ~3x size in the scratch dir.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

SIZE_MB=200; CONC="1 4 8"; REPS=2; ROUNDS=5
while [ $# -gt 0 ]; do
  case $1 in
    --size-mb) SIZE_MB=$2; shift 2;;
    --conc) CONC=$2; shift 2;;
    --reps) REPS=$2; shift 2;;
    --rounds) ROUNDS=$2; shift 2;;
    -h|--help) usage; exit 0;;
    *) common_opt "$@" || die "unknown argument $1 (see --help)"; shift "$COMMON_SHIFT";;
  esac
done
need "$PYTHON" curl skopeo sha256sum "$REGISTRY_BIN" "$NGINX_BIN"

bench_mktemp
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# gzip level 0 (stored blocks): fast to make, and skopeo pushes it as-is (it would gzip an
# uncompressed layer on push, changing the digest)
log "making a ${SIZE_MB} MiB blob"
"$PYTHON" "$BENCH_DIR/mkimage.py" --layers 1 --size-mb "$SIZE_MB" --compression gzip --gzip-level 0 \
  --out "$BENCH_TMP/img" --tag v1 >"$BENCH_TMP/img.json" 2>/dev/null || die "mkimage.py failed"
read -r DIGEST BLOBPATH BLOBSIZE < <("$PYTHON" -c 'import json,sys; l=json.load(open(sys.argv[1]))["layers"][0]; print(l["digest"], l["path"], l["size"])' "$BENCH_TMP/img.json")

NP=$(free_port); start_nginx "$NP" "$(dirname "$BLOBPATH")"
RP=$(free_port); start_registry "$RP" "$BENCH_TMP/registry"
setup_msr

skopeo copy --quiet --dest-tls-verify=false "oci:$BENCH_TMP/img:v1" "docker://$REGISTRY_HOSTPORT/admin/blob:v1" \
  || die "push to docker-registry failed"
skopeo copy --quiet --dest-tls-verify=false --dest-creds "$MSR_CREDS" "oci:$BENCH_TMP/img:v1" \
  "docker://$MSR_HOSTPORT/$MSR_USER/blob:v1" || die "push to MSR failed"
MSR_SCOPE="repository:$MSR_USER/blob:pull"

NAMES=(nginx dist msr)
declare -A URL LABEL
URL[nginx]="http://127.0.0.1:$NP/${DIGEST#sha256:}";              LABEL[nginx]="nginx $("$NGINX_BIN" -v 2>&1 | sed 's|.*/||') (static file, sendfile)"
URL[dist]="http://$REGISTRY_HOSTPORT/v2/admin/blob/blobs/$DIGEST";  LABEL[dist]="Distribution $(registry_version) (docker-registry, no auth)"
URL[msr]="$MSR_URL/v2/$MSR_USER/blob/blobs/$DIGEST";                LABEL[msr]="$MSR_LABEL, bearer token"

auth_args() {  # auth_args TARGET -> AUTH array (a fresh token for MSR)
  AUTH=()
  if [ "$1" = msr ]; then AUTH=(-H "Authorization: Bearer $(msr_token "$MSR_SCOPE")"); fi
}

# one batch: C clients x REPS GETs -> prints MiB/s (fails on non-200 / short bodies)
batch() {
  local url=$1 c=$2 out="$BENCH_TMP/batch.out" i pids=() t0 t1
  : >"$out"
  t0=$EPOCHREALTIME
  for i in $(seq "$c"); do
    ( for _ in $(seq "$REPS"); do
        curl -s -o /dev/null "${AUTH[@]}" -w '%{http_code} %{size_download}\n' "$url" || echo "curl-failed 0"
      done >>"$out" ) &
    pids+=($!)
  done
  wait "${pids[@]}"
  t1=$EPOCHREALTIME
  awk -v t0="$t0" -v t1="$t1" -v want="$BLOBSIZE" -v n=$((c * REPS)) -v url="$url" '
    { if ($1 != 200 || $2 != want) bad++; b += $2; k++ }
    END { if (bad || k != n) { printf "bad responses (%d of %d not 200 with %d bytes) from %s\n", bad, k, want, url > "/dev/stderr"; exit 1 }
          printf "%.1f\n", b / (t1 - t0) / 1048576 }' "$out"
}

declare -A RES
for t in "${NAMES[@]}"; do
  u=${URL[$t]}
  auth_args "$t"
  # check GET: status, size and content (also warms the page cache)
  sum=$(curl -s -f "${AUTH[@]}" "$u" | sha256sum | cut -d' ' -f1) || die "$t: GET $u failed"
  [ "sha256:$sum" = "$DIGEST" ] || die "$t: body of $u does not match $DIGEST (got sha256:$sum)"
  log "$t: check GET ok (digest matches)"
  for c in $CONC; do
    vals=()
    for _ in $(seq "$ROUNDS"); do
      auth_args "$t"
      v=$(batch "$u" "$c") || die "$t c=$c: failed"
      vals+=("$v")
    done
    RES[$t,$c]=$(printf '%s\n' "${vals[@]}" | median)
    log "$t c=$c: ${vals[*]} MiB/s -> median ${RES[$t,$c]}"
  done
done

echo "## blob GET throughput"
echo
echo "One $SIZE_MB MiB blob ($BLOBSIZE bytes); C concurrent curl clients, $REPS GETs each; aggregate"
echo "MiB/s = bytes / wall time; median of $ROUNDS rounds; (x) = ratio to nginx at the same C."
echo "Machine: $(host_summary); clients and servers share the cores."
echo
printf '| target |'; for c in $CONC; do printf ' c=%s MiB/s |' "$c"; done; echo
printf '|---|'; for c in $CONC; do printf -- '---:|'; done; echo
for t in "${NAMES[@]}"; do
  printf '| %s |' "${LABEL[$t]}"
  for c in $CONC; do
    if [ "$t" = nginx ]; then printf ' %.0f |' "${RES[$t,$c]}"
    else printf ' %.0f (%s) |' "${RES[$t,$c]}" "$(ratio "${RES[$t,$c]}" "${RES[nginx,$c]}")"; fi
  done
  echo
done
printf '| MSR / Distribution |'; for c in $CONC; do printf ' %s |' "$(ratio "${RES[msr,$c]}" "${RES[dist,$c]}")"; done; echo
echo
