#!/usr/bin/env bash
# Builds the service image with podman on a local Debian base (python3 + pip + torch CPU, made with
# debootstrap: no registry needed) and smoke-tests the container: ready, /encode (with an upload big
# enough to be spooled to /tmp on a read-only root), /decode, non-root, HEALTHCHECK, no wheel left in the
# image, the base contract refused with its message, drain on SIGTERM (readiness 503, exit 0), and
# `titok tokenize` as the Kubernetes Job runs it (read-only root, a data volume).
# With SCALE=1 it then runs the compose scale path by hand: replicas on a podman network behind
# deploy/haproxy/haproxy.cfg, scraped by Prometheus with deploy/prometheus/prometheus.yml (HAProxy and
# Prometheus from Debian, on the same base), a replica added under load, another drained under load; it
# counts the answers, the replicas Prometheus found, and runs every query of the Grafana dashboard.
# Not in CI: it needs root, podman, runc, debootstrap, a Debian mirror and a package index, ~4 GB of disk
# and minutes. What the host needs is in the README ("Checking the image with podman").
#
#   sudo scripts/container_check.sh
#
# Environment (all optional):
#   WORK           scratch folder (default /var/tmp/titok-container-check): the base's rootfs, logs
#   DEBIAN_MIRROR  default http://deb.debian.org/debian          SUITE  default bookworm
#   TORCH          the torch requirement of the base (default torch==2.13.0+cpu)
#   TORCH_PIP_ARGS where pip finds it (default: --find-links DIR when pip's find-links DIR holds that
#                  wheel, else --extra-index-url https://download.pytorch.org/whl/cpu)
#   EXTRA_CA       a PEM file of extra CAs (a TLS-intercepting proxy) for the base's pip and the build's
#                  EXTRA_CA_CERTS (default: the host's /usr/local/share/ca-certificates/*.crt, if any)
#   PIP_INDEX_URL  the index the build installs the serving dependencies from (default PyPI)
#   PORT           host port of the smoke test (default 18000)
#   REBUILD_BASE=1 rebuild the base even if localhost/titok-base:check exists
#   NO_CACHE=1     build the image without podman's layer cache (for the build time)
#   SCALE=1        also the scale trial (REQUESTS requests, default 600, 8 at a time)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/var/tmp/titok-container-check}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${SUITE:-bookworm}"
TORCH="${TORCH:-torch==2.13.0+cpu}"
PORT="${PORT:-18000}"
BASE=localhost/titok-base:check
IMAGE=localhost/titok-service:check
NAME=titok-container-check
mkdir -p "$WORK"

say() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
for tool in podman runc debootstrap curl python3; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install podman runc debootstrap curl)"
done
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap and chroot need it)"

# A VM without CAP_SYS_RESOURCE cannot raise rlimits: podman's default (nofile 1048576) and crun's
# cgroup handling fail there. A private containers.conf keeps the host's own untouched.
cap_eff=$((16#$(awk '/^CapEff/ {print $2}' /proc/self/status)))
if (( (cap_eff >> 24 & 1) == 0 )); then
    conf="$WORK/containers.conf"
    printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\n' \
        "$(ulimit -Hn)" "$(ulimit -Hn)" > "$conf"
    export CONTAINERS_CONF="$conf"
    say "no CAP_SYS_RESOURCE: podman uses $conf (runc, ulimits within the hard limits)"
fi

extra_ca="$WORK/extra-ca.pem"
if [ -n "${EXTRA_CA:-}" ]; then
    cp "$EXTRA_CA" "$extra_ca"
else
    cat /usr/local/share/ca-certificates/*.crt > "$extra_ca" 2>/dev/null || : > "$extra_ca"
fi

if [ "${REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$BASE"; then
    say "base: debootstrap $SUITE + python3-pip + $TORCH"
    t0=$(now)
    rootfs="$WORK/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates "$SUITE" "$rootfs" \
        "$DEBIAN_MIRROR" > "$WORK/debootstrap.log" 2>&1 || fail "debootstrap (see $WORK/debootstrap.log)"
    # The proxy's CA only while pip runs here: the base keeps Debian's CAs, so the build must get
    # EXTRA_CA_CERTS to pass the same proxy (that build arg is tested too).
    cp "$extra_ca" "$rootfs/usr/local/share/ca-certificates/extra-ca.crt"
    chroot "$rootfs" update-ca-certificates > /dev/null
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    if [ -z "${TORCH_PIP_ARGS:-}" ]; then
        links="$(pip3 config get global.find-links 2>/dev/null || echo "${PIP_FIND_LINKS:-}")"
        wheel="$(find "${links:-/nonexistent}" -maxdepth 1 -name "torch-${TORCH#torch==}-*.whl" 2>/dev/null | head -1 || true)"
        if [ -n "$wheel" ]; then
            mkdir -p "$rootfs/tmp/wheels" && cp "$wheel" "$rootfs/tmp/wheels/"
            TORCH_PIP_ARGS="--find-links /tmp/wheels"
        else
            TORCH_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
        fi
    fi
    # shellcheck disable=SC2086
    chroot "$rootfs" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root python3 -m pip install --no-cache-dir \
        --break-system-packages $TORCH_PIP_ARGS "$TORCH" > "$WORK/pip-torch.log" 2>&1 \
        || fail "pip install $TORCH in the base (see $WORK/pip-torch.log)"
    rm -rf "$rootfs/tmp/wheels" "$rootfs/usr/local/share/ca-certificates/extra-ca.crt" "$rootfs/root/.cache"
    chroot "$rootfs" update-ca-certificates --fresh > /dev/null
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/*
    : > "$rootfs/etc/resolv.conf"
    tar -C "$rootfs" -c . | podman import --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD=["python3"]' - "$BASE" > /dev/null
    rm -rf "$rootfs"
    say "base built in $(since "$t0") s"
fi

say "contract: a base without torch is refused with the Dockerfile's message"
printf 'FROM %s\nRUN python3 -m pip uninstall -y --break-system-packages torch\n' "$BASE" \
    | podman build -q -t localhost/titok-base-notorch:check -f - "$WORK" > /dev/null
if podman build --build-arg BASE_IMAGE=localhost/titok-base-notorch:check -t localhost/titok-bad:check \
        "$ROOT" > "$WORK/build-notorch.log" 2>&1; then
    fail "the build accepted a base without torch"
fi
grep -q "BASE_IMAGE must provide python3" "$WORK/build-notorch.log" || fail "no contract message (see $WORK/build-notorch.log)"
podman rmi -f localhost/titok-base-notorch:check > /dev/null 2>&1 || true

say "build (docker format, so the HEALTHCHECK is kept)"
t0=$(now)
podman build ${NO_CACHE:+--no-cache} --format docker --build-arg BASE_IMAGE="$BASE" --build-arg EXTRA_CA_CERTS="$(cat "$extra_ca")" \
    --build-arg PIP_INDEX_URL="${PIP_INDEX_URL:-https://pypi.org/simple}" -t "$IMAGE" "$ROOT" > "$WORK/build.log" 2>&1 || fail "podman build (see $WORK/build.log)"
build_s=$(since "$t0")
image_mb=$(( $(podman image inspect --format '{{.Size}}' "$IMAGE") / 1000000 ))
base_mb=$(( $(podman image inspect --format '{{.Size}}' "$BASE") / 1000000 ))
say "built in $build_s s: $image_mb MB, of which the base $base_mb MB; layers:"
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-150 | head -12
[ -z "$(podman run --rm "$IMAGE" find / -xdev -name 'titok_service*.whl' 2>/dev/null)" ] || fail "a wheel is left in the image"

podman rm -f "$NAME" > /dev/null 2>&1 || true
cleanup() { podman rm -f "$NAME" > /dev/null 2>&1 || true; }
trap cleanup EXIT
say "run: read-only root, /tmp a tmpfs, drain grace 3 s"
t0=$(now)
podman run -d --name "$NAME" --read-only --tmpfs /tmp -p "127.0.0.1:$PORT:8000" -e TITOK_DRAIN_GRACE_S=3 \
    "$IMAGE" > /dev/null
url="http://127.0.0.1:$PORT"
until curl -fsS -o /dev/null "$url/readyz" 2>/dev/null; do
    [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" = true ] || { podman logs "$NAME" | tail -20; fail "the container exited"; }
    python3 -c "import sys, time; time.sleep(0.1); sys.exit(time.time() - float(sys.argv[1]) > 300)" "$t0" \
        || fail "not ready after 300 s"
done
ready_s=$(since "$t0")
say "ready $ready_s s after podman run"

[ "$(podman exec "$NAME" id -u)" = 10001 ] || fail "the service does not run as uid 10001"
podman exec "$NAME" sh -c 'touch /home/titok/x' 2>/dev/null && fail "the root file system is writable"
podman healthcheck run "$NAME" || fail "the HEALTHCHECK failed"

# A noise PNG over python-multipart's 1 MiB spool threshold, made by the image's own Pillow.
podman exec "$NAME" python3 -c "import os, sys; from PIL import Image
Image.frombytes('RGB', (700, 700), os.urandom(700 * 700 * 3)).save(sys.stdout.buffer, 'PNG')" > "$WORK/noise.png"
curl -fsS -F "images=@$WORK/noise.png" -F "images=@$ROOT/service/assets/ui.png" "$url/encode" > "$WORK/encode.json" \
    || fail "/encode"
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert len(d['tokens']) == 2 and \
len(d['tokens'][0]) == d['num_tokens'], d; json.dump({'tokens': d['tokens'][1]}, open(sys.argv[2], 'w'))" \
    "$WORK/encode.json" "$WORK/tokens.json" || fail "/encode answered $(head -c 300 "$WORK/encode.json")"
curl -fsS -H 'Content-Type: application/json' -d "@$WORK/tokens.json" "$url/decode" -o "$WORK/decoded.png" || fail "/decode"
[ "$(head -c 8 "$WORK/decoded.png" | od -An -tx1 | tr -d ' ')" = 89504e470d0a1a0a ] || fail "/decode gave no PNG"
say "encode ($(stat -c %s "$WORK/noise.png") + $(stat -c %s "$ROOT/service/assets/ui.png") bytes) and decode: 200"

say "drain: SIGTERM, /readyz must answer 503 during the grace, then exit 0"
t0=$(now)
podman kill --signal TERM "$NAME" > /dev/null
sleep 0.5
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz")
[ "$code" = 503 ] || fail "/readyz answered $code while draining"
exit_code=$(podman wait "$NAME")
drain_s=$(since "$t0")
[ "$exit_code" = 0 ] || { podman logs "$NAME" | tail -20; fail "exit code $exit_code after SIGTERM"; }
say "drained and exited 0, $drain_s s after SIGTERM (grace 3 s)"

say "tokenize as the Kubernetes Job runs it: read-only root, a data volume, uid 10001"
rm -rf "$WORK/data" && mkdir -p "$WORK/data/images"
cp "$ROOT"/service/assets/*.png "$ROOT"/model/assets/*.png "$WORK/data/images/"
chown -R 10001:10001 "$WORK/data"
podman run --rm --read-only --tmpfs /tmp -v "$WORK/data:/data" "$IMAGE" \
    titok tokenize /data/images --out /data/tokens --device cpu --workers 1 > "$WORK/tokenize.log" 2>&1 \
    || fail "titok tokenize (see $WORK/tokenize.log)"
ls "$WORK"/data/tokens/*.done.json > /dev/null 2>&1 || fail "titok tokenize wrote no complete shard"
say "$(grep -E '^images tokenized|^shards written' "$WORK/tokenize.log" | tr -s ' ' | paste -sd ';')"

if command -v haproxy >/dev/null; then
    haproxy -c -q -f "$ROOT/deploy/haproxy/haproxy.cfg" || fail "deploy/haproxy/haproxy.cfg"
    say "deploy/haproxy/haproxy.cfg: valid for $(haproxy -v | head -1 | cut -d' ' -f1-3)"
fi

if [ "${SCALE:-0}" = 1 ]; then
    say "scale: 2 replicas behind HAProxy on a podman network, a 3rd added and one drained under load"
    for tool in haproxy prometheus; do
        printf 'FROM %s\nRUN apt-get update && apt-get install -y --no-install-recommends %s && rm -rf /var/lib/apt/lists/*\n' \
            "$BASE" "$tool" | podman build -q -t "localhost/titok-$tool:check" -f - "$WORK" > /dev/null
    done
    net=titok-check-net
    scale_cleanup() {
        podman rm -f titok-check-r1 titok-check-r2 titok-check-r3 titok-check-lb titok-check-prom > /dev/null 2>&1 || true
        podman network rm "$net" > /dev/null 2>&1 || true
    }
    trap 'cleanup; scale_cleanup' EXIT
    scale_cleanup
    podman network create "$net" > /dev/null
    replica() {  # one replica, found by HAProxy and Prometheus through the DNS alias `titok`
        podman run -d --name "titok-check-r$1" --network "$net" --network-alias titok -e TITOK_TORCH_THREADS=1 \
            -e TITOK_DRAIN_GRACE_S=5 "$IMAGE" > /dev/null 2>&1
    }
    encodes() {  # /encode requests a replica answered, from its own /metrics
        podman exec "titok-check-r$1" python3 -c "import urllib.request as u; print(int(sum(float(l.split()[-1]) \
for l in u.urlopen('http://127.0.0.1:8000/metrics').read().decode().splitlines() \
if l.startswith('titok_requests_total{endpoint=\"/encode\"'))))"
    }
    up() { podman logs titok-check-lb 2>&1 | grep -c "^\[WARNING\].* is UP, reason: Layer7 check passed" || true; }
    replica 1; replica 2
    podman run -d --name titok-check-lb --network "$net" -p "127.0.0.1:$((PORT + 1)):8000" \
        -v "$ROOT/deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" localhost/titok-haproxy:check \
        haproxy -W -db -f /usr/local/etc/haproxy/haproxy.cfg > /dev/null
    prom="http://127.0.0.1:$((PORT + 2))"
    podman run -d --name titok-check-prom --network "$net" -p "127.0.0.1:$((PORT + 2)):9090" \
        -v "$ROOT/deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" localhost/titok-prometheus:check \
        prometheus --config.file=/etc/prometheus/prometheus.yml --storage.tsdb.path=/tmp/prometheus > /dev/null
    for _ in $(seq 600); do [ "$(up)" -ge 2 ] && break; sleep 0.5; done
    [ "$(up)" -ge 2 ] || fail "HAProxy did not find 2 ready replicas (podman logs titok-check-lb)"
    requests="${REQUESTS:-600}"
    seq "$requests" | xargs -P 8 -I{} curl -s -o /dev/null -w '%{http_code}\n' -F "images=@$ROOT/service/assets/ui.png" \
        "http://127.0.0.1:$((PORT + 1))/encode" > "$WORK/scale-codes.txt" &
    load=$!
    sleep 2; replica 3
    for _ in $(seq 600); do [ "$(up)" -ge 3 ] && break; sleep 0.5; done
    podman kill --signal TERM titok-check-r1 > /dev/null
    [ "$(podman wait titok-check-r1)" = 0 ] || fail "replica 1 did not exit 0 after SIGTERM"
    wait "$load"
    r1=$(podman logs titok-check-r1 2>&1 | grep -c '"/encode"' || true)
    say "answers through the balancer: $(sort "$WORK/scale-codes.txt" | uniq -c | awk '{printf "%s x %s  ", $1, $2}')"
    say "/encode per replica: r1 $r1 (drained), r2 $(encodes 2), r3 $(encodes 3) (added under load)"
    [ "$(encodes 3)" -gt 0 ] || fail "the replica added under load got no traffic"
    # Prometheus: the replicas it found by DNS (re-read every 15 s), then every dashboard query, with
    # Grafana's $__rate_interval as 1m.
    python3 - "$prom" "$ROOT/deploy/grafana/dashboards/titok.json" <<'PY' || fail "Prometheus (see above)"
import json, sys, time, urllib.parse, urllib.request
prom, dashboard = sys.argv[1], sys.argv[2]
def get(path, **query):
    return json.load(urllib.request.urlopen(f"{prom}{path}?{urllib.parse.urlencode(query)}", timeout=10))["data"]
deadline = time.time() + 60
while True:
    up = sorted(t["labels"]["instance"] for t in get("/api/v1/targets")["activeTargets"] if t["health"] == "up")
    if len(up) >= 2 or time.time() > deadline:
        break
    time.sleep(2)
print(f"== Prometheus scrapes {len(up)} replicas found by DNS: {' '.join(up)}")
assert len(up) >= 2, "Prometheus did not find the replicas"
exprs = [t["expr"] for p in json.load(open(dashboard))["panels"] for t in p.get("targets", [])]
for expr in exprs:
    result = get("/api/v1/query", query=expr.replace("$__rate_interval", "1m"))["result"]
    print(f"   {len(result):2d} series  {expr[:110]}")
PY
fi
printf 'OK  build %s s  image %s MB (base %s MB)  ready %s s  drain %s s\n' \
    "$build_s" "$image_mb" "$base_mb" "$ready_s" "$drain_s"
