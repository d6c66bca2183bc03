#!/usr/bin/env bash
# A real Kubernetes control plane for Ferrotrain's tests, built from upstream sources:
# etcd, kube-apiserver, kube-scheduler, kube-controller-manager, and kwok as the kubelet of fake nodes;
# also the components of the real node that scripts/node.sh starts (kubelet, kube-proxy, CoreDNS).
#   scripts/cluster.sh build   # compile the components into a cache keyed by tests/cluster/components
#   scripts/cluster.sh start   # start everything on 127.0.0.1; prints the environment to eval
#   scripts/cluster.sh bin     # print the folder of the built components
#   scripts/cluster.sh env     # print that environment again for a running cluster
#   scripts/cluster.sh stop    # stop every process by PID
# Environment: FERROTRAIN_CLUSTER_CACHE (default ~/.cache/ferrotrain-cluster),
# FERROTRAIN_CLUSTER_NODES (fake nodes, default 8), FERROTRAIN_CLUSTER_NODE_PODS (pods per node,
# default 110), FERROTRAIN_CLUSTER_DIR (state, default .tools/cluster), FERROTRAIN_CLUSTER_ADDRESS
# (where the API server listens, default 127.0.0.1; a real node's pods need the node address of
# scripts/node.sh, which this script then adds to lo behind a firewall chain).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/processes.sh
. scripts/processes.sh
root=$PWD
module=tests/cluster/components
cache_root=${FERROTRAIN_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrotrain-cluster}
state=${FERROTRAIN_CLUSTER_DIR:-$root/.tools/cluster}
nodes=${FERROTRAIN_CLUSTER_NODES:-8}
address=${FERROTRAIN_CLUSTER_ADDRESS:-127.0.0.1}
node_pods=${FERROTRAIN_CLUSTER_NODE_PODS:-110}
kube_version=v1.37.2

log() { printf '%s\n' "$*" >&2; }
die() { log "cluster: $*"; exit 1; }

# The cache key: the module's go.mod, go.sum and own sources, and the Go version that compiles them.
cache_key() {
  { cat "$module/go.mod" "$module/go.sum" "$module"/*.go "$module"/*/*.go; go env GOVERSION; } \
    | sha256sum | cut -c1-16
}
bin_dir() { echo "$cache_root/$(cache_key)/bin"; }

# Go's own install location, for shells whose PATH lacks it.
[ -x /usr/local/go/bin/go ] && ! command -v go >/dev/null 2>&1 && PATH=$PATH:/usr/local/go/bin

build() {
  command -v go >/dev/null 2>&1 || die "go is not installed (Go 1.26 builds the control plane)"
  local bin started
  bin=$(bin_dir)
  if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-scheduler" ] && [ -x "$bin/kube-controller-manager" ] \
    && [ -x "$bin/etcd" ] && [ -x "$bin/kwok" ] && [ -x "$bin/kubelet" ] && [ -x "$bin/kube-proxy" ] \
    && [ -x "$bin/coredns" ]; then
    log "cluster: components cached in $bin"
    return
  fi
  started=$(date +%s)
  mkdir -p "$bin.partial"
  # One `go build` of every binary: the packages they share compile once and the links run in
  # parallel. -mod=readonly: go.sum is the pin; a build never rewrites it. Stripped binaries link
  # faster. The version flags make `--version` print the release instead of v0.0.0-master.
  local version_flags="-s -w -X k8s.io/component-base/version.gitVersion=$kube_version
    -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37
    -X k8s.io/component-base/version.gitTreeState=clean"
  (cd "$module" && go build -mod=readonly -trimpath -ldflags "$version_flags" -o "$bin.partial/" \
    ./etcd ./coredns k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-controller-manager sigs.k8s.io/kwok/cmd/kwok \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
  rm -rf "$bin" && mv "$bin.partial" "$bin"
  log "cluster: built the control plane in $(( $(date +%s) - started ))s into $bin"
}

# Fails with the component's log tail when it has exited.
check_alive() {
  local name=$1 pid
  pid=$(cat "$state/pids/$name")
  kill -0 "$pid" 2>/dev/null && return
  log "cluster: $name exited; last lines of $state/logs/$name.log:"
  tail -20 "$state/logs/$name.log" >&2
  stop_all
  exit 1
}

# Whether every fake node reports Ready (one list: `kubectl wait` checks nodes one at a time).
all_nodes_ready() {
  local ready
  ready=$("${kubectl[@]}" get nodes --no-headers | awk '$2 == "Ready"' | wc -l)
  [ "$ready" -eq "$nodes" ]
}

wait_until() { # description, seconds, command...
  local what=$1 seconds=$2 deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    for pid_file in "$state"/pids/*; do check_alive "$(basename "$pid_file")"; done
    if ((SECONDS >= deadline)); then
      log "cluster: $what not ready after ${seconds}s"
      stop_all
      exit 1
    fi
    sleep 0.2
  done
}

certificates() {
  local pki=$state/pki
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=ferrotrain-test-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  sign() { # name, subject, extensions
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 2 -extfile <(printf '%s\n' "$3") -out "$pki/$1.crt" 2>/dev/null
  }
  # 10.96.0.1: the `kubernetes` Service's IP, which pods on a real node use.
  sign apiserver "/CN=kube-apiserver" \
    "subjectAltName=IP:127.0.0.1,IP:$address,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
  sign admin "/O=system:masters/CN=ferrotrain-test-admin" "extendedKeyUsage=clientAuth"
  # The API server's identity towards kubelets (`kubectl logs`, `exec`).
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
  openssl genrsa -out "$pki/service-account.key" 2048 2>/dev/null
  openssl rsa -in "$pki/service-account.key" -pubout -out "$pki/service-account.pub" 2>/dev/null
}

kubeconfig() { # server
  local pki=$state/pki
  cat >"$state/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: ferrotrain-test
  cluster:
    server: $1
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 "$pki/admin.crt")
    client-key-data: $(base64 -w0 "$pki/admin.key")
contexts:
- name: ferrotrain-test
  context: {cluster: ferrotrain-test, user: admin}
current-context: ferrotrain-test
YAML
}

# kwok plays the kubelet with the stages its own release ships (read from the pinned module, not
# copied): nodes become Ready and keep a Lease; bound pods become Running; terminating pods are
# deleted at once, and those that carry a finalizer (Kueue's) first stop as a kubelet stops them:
# their container ends (exit 143) and the pod turns Failed, which is what lets Kueue remove its
# finalizer. A test that must hold a pod Terminating (as a kubelet does during the grace period)
# annotates it kwok.x-k8s.io/status=custom and gives it a finalizer: the pod stages skip it.
kwok_config() {
  local stages
  stages="$(cd "$module" && go list -mod=readonly -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage"
  echo "apiVersion: config.kwok.x-k8s.io/v1alpha1"
  echo "kind: KwokConfiguration"
  # kwok leaves these at 0 (and refuses to start) when a configuration file is given.
  echo "options: {podPlayStageParallelism: 4, nodePlayStageParallelism: 4, nodeLeaseParallelism: 4, podsOnNodeSyncParallelism: 1}"
  for file in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml; do
    echo "---"
    cat "$stages/$file"
  done
  local unheld="    - key: '.metadata.annotations[\"kwok.x-k8s.io/status\"]'\n      operator: 'DoesNotExist'"
  echo "---"
  sed "s|^    matchExpressions:|    matchExpressions:\n$unheld|" "$stages/pod/fast/pod-ready.yaml"
  echo "---"
  sed "s|^    matchExpressions:|    matchExpressions:\n$unheld\n    - key: '.metadata.finalizers'\n      operator: 'DoesNotExist'|" \
    "$stages/pod/fast/pod-delete.yaml"
  cat <<'YAML'
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-stop-for-finalizer
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.annotations["kwok.x-k8s.io/status"]'
      operator: 'DoesNotExist'
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
    - key: '.metadata.finalizers'
      operator: 'Exists'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending', 'Running']
  next:
    statusTemplate: |
      {{ $now := Now }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 143
            finishedAt: {{ $now | Quote }}
            reason: Error
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Failed
YAML
}

# Fake nodes for kwok: 16 CPUs, 64 GiB, 8 GPUs each; the even ones labelled as GPU nodes.
# The last node is tainted for the tests that need a node of their own (preemption, node loss).
node_manifests() {
  for i in $(seq 0 $((nodes - 1))); do
    local gpu_label="" taints="[]"
    ((i % 2 == 0)) && gpu_label='nvidia.com/gpu.present: "true"'
    if ((i == nodes - 1)); then
      taints='[{key: ferrotrain.io/dedicated, value: "true", effect: NoSchedule}]'
      gpu_label='ferrotrain.io/dedicated: "true"'
    fi
    cat <<YAML
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
    $gpu_label
spec:
  taints: $taints
status:
  allocatable: {cpu: "16", memory: 64Gi, pods: "$node_pods", nvidia.com/gpu: "8"}
  capacity: {cpu: "16", memory: 64Gi, pods: "$node_pods", nvidia.com/gpu: "8"}
YAML
  done
}

environment() {
  cat <<ENV
export KUBECONFIG=$state/kubeconfig
export FERROTRAIN_CLUSTER_DIR=$state
export FERROTRAIN_CLUSTER_KUBECTL=$root/.tools/bin/kubectl
ENV
}

start() {
  build
  bash scripts/install-tools.sh
  local bin started
  bin=$(bin_dir)
  started=$(date +%s.%N)
  stop_all 2>/dev/null || true
  rm -rf "$state" && mkdir -p "$state/logs" "$state/pids" "$state/etcd"
  certificates
  local etcd_port peer_port api_port scheduler_port manager_port kwok_port pki=$state/pki
  etcd_port=$(free_port) peer_port=$(free_port) api_port=$(free_port)
  scheduler_port=$(free_port) manager_port=$(free_port) kwok_port=$(free_port)
  launch etcd "$bin/etcd" --name=ferrotrain-test --data-dir="$state/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="ferrotrain-test=http://127.0.0.1:$peer_port" --unsafe-no-fsync=true
  wait_until etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"
  # A loopback address cannot be the `kubernetes` Service's endpoint: then the API server keeps none.
  local reconciler=lease
  [ "$address" = 127.0.0.1 ] && reconciler=none
  [ "$address" = 127.0.0.1 ] || bash scripts/node.sh address "$address"
  launch kube-apiserver "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address="$address" --advertise-address="$address" --secure-port="$api_port" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$pki/service-account.pub" \
    --service-account-signing-key-file="$pki/service-account.key" \
    --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type="$reconciler" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=RBAC --enable-admission-plugins=PodSecurity --profiling=false
  kubeconfig "https://$address:$api_port"
  local kubectl=(.tools/bin/kubectl --kubeconfig="$state/kubeconfig")
  wait_until kube-apiserver 90 "${kubectl[@]}" get --raw /readyz
  local delegation=(--kubeconfig="$state/kubeconfig" --authentication-kubeconfig="$state/kubeconfig"
    --authorization-kubeconfig="$state/kubeconfig" --bind-address=127.0.0.1 --leader-elect=false)
  launch kube-scheduler "$bin/kube-scheduler" "${delegation[@]}" --secure-port="$scheduler_port"
  # The pod garbage collector's default threshold (12,500 terminated pods) would delete the
  # succeeded workers of the scale benchmark's 20,000 before the operator sees them succeed.
  launch kube-controller-manager "$bin/kube-controller-manager" "${delegation[@]}" \
    --secure-port="$manager_port" --service-account-private-key-file="$pki/service-account.key" \
    --root-ca-file="$pki/ca.crt" --use-service-account-credentials=true \
    --node-monitor-grace-period=20s --node-monitor-period=2s \
    --terminated-pod-gc-threshold=100000
  kwok_config >"$state/kwok.yaml"
  launch kwok "$bin/kwok" --kubeconfig="$state/kubeconfig" --config="$state/kwok.yaml" --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake --manage-nodes-with-label-selector= \
    --manage-single-node= --server-address="127.0.0.1:$kwok_port" --cidr=10.244.0.0/16 \
    --node-ip=10.0.0.1 --node-lease-duration-seconds=40
  node_manifests | "${kubectl[@]}" apply -f - >/dev/null
  wait_until "kwok nodes" 120 all_nodes_ready
  wait_until "default ServiceAccount" 60 "${kubectl[@]}" get serviceaccount default -n default
  wait_until kube-scheduler 30 curl -skf "https://127.0.0.1:$scheduler_port/healthz"
  log "cluster: ready in $(python3 -c "print(round($(date +%s.%N) - $started, 1))")s with $nodes kwok nodes; logs in $state/logs"
  environment
}

stop_all() {
  [ -d "$state/pids" ] || return 0
  local order=(kwok kube-controller-manager kube-scheduler kube-apiserver etcd)
  for name in "${order[@]}"; do
    stop_pid_file "$state/pids/$name"
  done
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop_all ;;
  env) [ -f "$state/kubeconfig" ] || die "no cluster in $state"; environment ;;
  bin) bin_dir ;;
  *) echo "usage: $0 build|start|stop|env|bin" >&2; exit 2 ;;
esac
