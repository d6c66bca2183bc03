#!/usr/bin/env bash
# Kueue beside the control plane of scripts/cluster.sh, for the queue scenarios of the cluster
# suite: built from its released source (its own Go module, tests/cluster/kueue, cached like the
# control plane), its CRDs applied, its manager running on this machine with its webhooks served
# on 127.0.0.1 (a certificate made here, webhook configurations pointing at that URL) and the
# plain-pod integration on. Only namespaces labelled ferrotrain.io/kueue=enabled are managed, so
# the other scenarios never pass through its webhooks.
#   scripts/kueue.sh build   # compile into the cache
#   scripts/kueue.sh start   # needs a running control plane (KUBECONFIG); waits until it serves
#   scripts/kueue.sh stop
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/processes.sh
. scripts/processes.sh
module=tests/cluster/kueue
cache_root=${FERROTRAIN_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrotrain-cluster}
state=${FERROTRAIN_KUEUE_DIR:-$PWD/.tools/kueue}
kubectl=${FERROTRAIN_CLUSTER_KUBECTL:-$PWD/.tools/bin/kubectl}
label=ferrotrain.io/kueue
metrics_certs=/etc/kueue/metrics/certs

log() { printf '%s\n' "$*" >&2; }
die() { log "kueue: $*"; exit 1; }

[ -x /usr/local/go/bin/go ] && ! command -v go >/dev/null 2>&1 && PATH=$PATH:/usr/local/go/bin

cache_key() {
  { echo kueue; cat "$module/go.mod" "$module/go.sum" "$module"/*.go; go env GOVERSION; } \
    | sha256sum | cut -c1-16
}
binary() { echo "$cache_root/$(cache_key)/bin/kueue"; }

build() {
  command -v go >/dev/null 2>&1 || die "go is not installed (Go 1.26 builds Kueue)"
  local bin started
  bin=$(binary)
  if [ -x "$bin" ]; then
    log "kueue: cached in $bin"
    return
  fi
  started=$(date +%s)
  mkdir -p "$(dirname "$bin").partial"
  (cd "$module" && go build -mod=readonly -trimpath -ldflags "-s -w" \
    -o "$(dirname "$bin").partial/" sigs.k8s.io/kueue/cmd/kueue)
  rm -rf "$(dirname "$bin")" && mv "$(dirname "$bin").partial" "$(dirname "$bin")"
  log "kueue: built in $(( $(date +%s) - started ))s into $bin"
}

# A CA and a serving certificate for 127.0.0.1, as Kueue's webhook server reads them.
certificates() {
  local dir=$1
  mkdir -p "$dir"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san.ext"
  (
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
      -days 2 -subj /CN=ferrotrain-kueue-ca
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout tls.key -out tls.csr \
      -subj /CN=127.0.0.1
    openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out tls.crt -days 2 \
      -extfile san.ext
  ) >/dev/null 2>&1
}

# One webhook entry: kind (mutating|validating), name, path, API group, resource, operations.
webhook() {
  local name=$2 path=$3 group=$4 resource=$5 operations=$6 selector=""
  if [ "$resource" = pods ]; then
    selector="
  namespaceSelector:
    matchLabels: {$label: enabled}"
  fi
  cat <<YAML
- name: $name
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  clientConfig:
    url: https://127.0.0.1:$webhook_port$path
    caBundle: $ca_bundle
  rules:
  - apiGroups: ["$group"]
    apiVersions: ["*"]
    operations: [$operations]
    resources: [$resource]$selector
YAML
}

start() {
  [ -n "${KUBECONFIG:-}" ] || die "KUBECONFIG is not set: start the control plane first (scripts/cluster.sh start)"
  build
  stop >/dev/null 2>&1 || true
  rm -rf "$state" && mkdir -p "$state/logs" "$state/pids"
  certificates "$state/certs"
  webhook_port=$(free_port)
  local health_port source
  health_port=$(free_port)
  ca_bundle=$(base64 -w0 <"$state/certs/ca.crt")
  source=$(cd "$module" && go list -mod=readonly -m -f '{{.Dir}}' sigs.k8s.io/kueue)
  "$kubectl" apply --server-side --force-conflicts -f "$source/config/components/crd/bases" >/dev/null
  # Served once each kind answers a list (`kubectl wait` fails on a CRD without status yet).
  local served=""
  for _ in $(seq 1 120); do
    served=yes
    for kind in workloads clusterqueues localqueues resourceflavors; do
      "$kubectl" get "$kind.kueue.x-k8s.io" -A >/dev/null 2>&1 || served=""
    done
    [ -n "$served" ] && break
    sleep 0.5
  done
  [ -n "$served" ] || die "Kueue's CRDs were not served within 60 s"
  {
    echo "apiVersion: admissionregistration.k8s.io/v1"
    echo "kind: MutatingWebhookConfiguration"
    echo "metadata: {name: ferrotrain-test-kueue}"
    echo "webhooks:"
    webhook mutating mpod.kb.io /mutate--v1-pod "" pods CREATE
    webhook mutating mworkload.kb.io /mutate-kueue-x-k8s-io-v1beta2-workload kueue.x-k8s.io workloads CREATE
    webhook mutating mclusterqueue.kb.io /mutate-kueue-x-k8s-io-v1beta2-clusterqueue kueue.x-k8s.io clusterqueues CREATE
    webhook mutating mresourceflavor.kb.io /mutate-kueue-x-k8s-io-v1beta2-resourceflavor kueue.x-k8s.io resourceflavors CREATE
    echo "---"
    echo "apiVersion: admissionregistration.k8s.io/v1"
    echo "kind: ValidatingWebhookConfiguration"
    echo "metadata: {name: ferrotrain-test-kueue}"
    echo "webhooks:"
    webhook validating vpod.kb.io /validate--v1-pod "" pods "CREATE, UPDATE"
    webhook validating vworkload.kb.io /validate-kueue-x-k8s-io-v1beta2-workload kueue.x-k8s.io "workloads, workloads/status" "CREATE, UPDATE"
    webhook validating vclusterqueue.kb.io /validate-kueue-x-k8s-io-v1beta2-clusterqueue kueue.x-k8s.io clusterqueues "CREATE, UPDATE"
    webhook validating vresourceflavor.kb.io /validate-kueue-x-k8s-io-v1beta2-resourceflavor kueue.x-k8s.io resourceflavors "CREATE, UPDATE"
  } >"$state/webhooks.yaml"
  cat >"$state/config.yaml" <<YAML
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
health:
  healthProbeBindAddress: 127.0.0.1:$health_port
metrics:
  bindAddress: "0"
webhook:
  host: 127.0.0.1
  port: $webhook_port
  certDir: $state/certs
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
managedJobsNamespaceSelector:
  matchLabels: {$label: enabled}
integrations:
  frameworks: ["pod"]
YAML
  # Without its internal certificate management the manager loads a metrics certificate from
  # this fixed path even with metrics off; it is made here and removed by `stop`.
  if [ ! -e "$metrics_certs" ]; then
    mkdir -p "$metrics_certs"
    cp "$state/certs/tls.crt" "$state/certs/tls.key" "$metrics_certs/"
    echo "$metrics_certs" >"$state/made-metrics-certs"
  fi
  # The on-demand visibility API would listen on all interfaces; the scenarios do not use it.
  launch kueue "$(binary)" --config="$state/config.yaml" --kubeconfig="$KUBECONFIG" \
    --feature-gates=VisibilityOnDemand=false
  for _ in $(seq 1 120); do
    if ! kill -0 "$(cat "$state/pids/kueue")" 2>/dev/null; then
      tail -20 "$state/logs/kueue.log" >&2
      die "the manager exited"
    fi
    if curl -sf "http://127.0.0.1:$health_port/readyz" >/dev/null 2>&1 \
      && curl -sk "https://127.0.0.1:$webhook_port/" >/dev/null 2>&1; then
      # Webhooks only once their server answers: until then pods in managed namespaces would fail.
      "$kubectl" apply -f "$state/webhooks.yaml" >/dev/null
      log "kueue: ready; logs in $state/logs/kueue.log"
      echo "export FERROTRAIN_KUEUE_DIR=$state"
      return
    fi
    sleep 0.5
  done
  tail -20 "$state/logs/kueue.log" >&2
  die "the manager did not become ready within 60 s"
}

stop() {
  if [ -n "${KUBECONFIG:-}" ] && [ -f "$state/webhooks.yaml" ]; then
    "$kubectl" delete --ignore-not-found -f "$state/webhooks.yaml" >/dev/null 2>&1 || true
  fi
  stop_pid_file "$state/pids/kueue"
  if [ -f "$state/made-metrics-certs" ]; then
    rm -rf "$metrics_certs"
    rmdir -p "$(dirname "$metrics_certs")" 2>/dev/null || true
    rm -f "$state/made-metrics-certs"
  fi
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
