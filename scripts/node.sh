#!/usr/bin/env bash
# A real Kubernetes node beside the control plane of scripts/cluster.sh: containerd, runc and a CNI
# bridge run pods as containers; a kubelet built from the pinned Kubernetes module registers the
# node; kube-proxy programs Service IPs; CoreDNS answers cluster names. Needs root.
#   scripts/node.sh deps    # install containerd, runc, CNI plugins, iptables, conntrack (apt)
#   scripts/node.sh address # add the node address to lo behind its firewall chain (cluster.sh does)
#   scripts/node.sh start   # start the node; the control plane must run on FERROTRAIN_NODE_ADDRESS
#   scripts/node.sh images  # import the OCI image tars of .tools/images (scripts/images.sh)
#   scripts/node.sh stop    # stop every process by PID; remove pods, mounts, the bridge, the address;
#                           # put back the firewall rules and sysctls of before the address was added
# The node is labelled and tainted ferrotrain.io/real-node, so only pods that tolerate the taint
# land on it. Everything listens on 127.0.0.1 or the node address (a /32 on lo, which a firewall
# chain lets only lo and the pod bridge reach). State lives in .tools/node.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/processes.sh
. scripts/processes.sh
root=$PWD
state=${FERROTRAIN_NODE_DIR:-$root/.tools/node}
# The host as it was before the node address was added: firewall rules, sysctls, network
# namespaces. A stop puts back the first two and removes namespaces that were not there.
host_before=$root/.tools/node-host
cluster=${FERROTRAIN_CLUSTER_DIR:-$root/.tools/cluster}
address=${FERROTRAIN_NODE_ADDRESS:-10.250.0.1}
node=ferrotrain-node
bridge=ferrotrain0
pod_cidr=10.88.0.0/24
guard_chain=FERROTRAIN-NODE
# Host settings the kubelet changes.
sysctls=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)
kubectl=("$root/.tools/bin/kubectl" --kubeconfig="$cluster/kubeconfig")

log() { printf '%s\n' "$*" >&2; }
die() { log "node: $*"; exit 1; }

deps() {
  local missing=()
  for tool in containerd runc iptables conntrack; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  ((${#missing[@]} == 0)) && return
  log "node: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd runc containernetworking-plugins \
    iptables conntrack >&2 || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq containerd runc containernetworking-plugins iptables conntrack >&2; }
}

record_host() {
  [ -d "$host_before" ] && return
  mkdir -p "$host_before"
  iptables-save >"$host_before/iptables"
  for name in "${sysctls[@]}"; do
    printf '%s=%s\n' "$name" "$(sysctl -n "$name")"
  done >"$host_before/sysctls"
  ls /var/run/netns 2>/dev/null >"$host_before/netns" || true
}

restore_host() {
  [ -d "$host_before" ] || return 0
  iptables-restore <"$host_before/iptables" || true
  while IFS= read -r setting; do sysctl -q -w "$setting" || true; done <"$host_before/sysctls"
  for netns in /var/run/netns/*; do
    [ -e "$netns" ] || continue
    grep -qx "$(basename "$netns")" "$host_before/netns" || ip netns delete "$(basename "$netns")" 2>/dev/null || true
  done
  rm -rf "$host_before"
}

# The node address on lo, reachable only from the machine itself and its pods.
host_address() {
  record_host
  ip -4 addr show dev lo | grep -q " $address/32" || ip addr add "$address/32" dev lo
  iptables -N "$guard_chain" 2>/dev/null || iptables -F "$guard_chain"
  iptables -A "$guard_chain" -i lo -j RETURN
  iptables -A "$guard_chain" -i "$bridge" -j RETURN
  iptables -A "$guard_chain" -j DROP
  iptables -C INPUT -d "$address/32" -j "$guard_chain" 2>/dev/null \
    || iptables -I INPUT -d "$address/32" -j "$guard_chain"
}

wait_until() { # description, seconds, command...
  local what=$1 seconds=$2 deadline pid
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    for pid_file in "$state"/pids/*; do
      pid=$(cat "$pid_file")
      if ! kill -0 "$pid" 2>/dev/null; then
        log "node: $(basename "$pid_file") exited; last lines of its log:"
        tail -20 "$state/logs/$(basename "$pid_file").log" >&2
        stop
        exit 1
      fi
    done
    if ((SECONDS >= deadline)); then
      log "node: $what not ready after ${seconds}s; logs in $state/logs"
      stop
      exit 1
    fi
    sleep 0.2
  done
}

certificates() {
  local pki=$state/pki ca=$cluster/pki
  mkdir -p "$pki"
  sign() { # name, subject, extensions
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
    openssl x509 -req -in "$pki/$1.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" -CAcreateserial \
      -days 2 -extfile <(printf '%s\n' "$3") -out "$pki/$1.crt" 2>/dev/null
  }
  # The kubelet's identity (the group RBAC's system:node role is bound to) and its serving
  # certificate, which the API server checks when it proxies `kubectl logs`.
  sign kubelet-client "/O=system:nodes/CN=system:node:$node" "extendedKeyUsage=clientAuth"
  sign kubelet-serving "/CN=$node" "subjectAltName=IP:$address,DNS:$node
extendedKeyUsage=serverAuth"
  sign kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
}

kubeconfig() { # user certificate name
  cat <<YAML
apiVersion: v1
kind: Config
clusters:
- name: ferrotrain-test
  cluster:
    server: $(grep -m1 'server:' "$cluster/kubeconfig" | awk '{print $2}')
    certificate-authority: $cluster/pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $state/pki/$1.crt
    client-key: $state/pki/$1.key
contexts:
- name: ferrotrain-test
  context: {cluster: ferrotrain-test, user: $1}
current-context: ferrotrain-test
YAML
}

containerd_config() {
  cat <<TOML
version = 2
root = "$state/containerd/root"
state = "$state/containerd/state"
[grpc]
  address = "$state/containerd.sock"
[ttrpc]
  address = "$state/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/ferrotrain/pause:0.1"
  # The machine may lack CAP_SYS_RESOURCE; without this every sandbox fails to start.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$state/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni"
TOML
}

cni_config() {
  cat <<JSON
{
  "cniVersion": "0.4.0",
  "name": "ferrotrain",
  "plugins": [
    {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$state/cni-ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

kubelet_config() {
  cat <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine kind runs cgroup v1, and containerd 1.6 does not report its cgroup driver.
failCgroupV1: false
cgroupDriver: cgroupfs
address: $address
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
tlsCertFile: $state/pki/kubelet-serving.crt
tlsPrivateKeyFile: $state/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $cluster/pki/ca.crt}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
clusterDNS: [$address]
containerRuntimeEndpoint: unix://$state/containerd.sock
podLogsDir: $state/pod-logs
volumePluginDir: $state/volume-plugins
staticPodPath: ""
podCIDR: $pod_cidr
maxPods: 30
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
registerWithTaints:
- {key: ferrotrain.io/real-node, value: "true", effect: NoSchedule}
YAML
}

kube_proxy_config() {
  cat <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $state/kube-proxy.kubeconfig}
hostnameOverride: $node
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
clusterCIDR: $pod_cidr
# The machine's conntrack table is left as it is.
conntrack: {maxPerCore: 0, min: 0}
YAML
}

corefile() {
  cat <<COREFILE
cluster.local:53 {
    bind $address
    errors
    health 127.0.0.1:0
    ready 127.0.0.1:0
    kubernetes cluster.local {
        kubeconfig $cluster/kubeconfig
        pods insecure
    }
    cache 30
}
COREFILE
}

node_ready() {
  [ "$("${kubectl[@]}" get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

start() {
  [ "$(id -u)" = 0 ] || die "a node needs root (containers, networks, mounts)"
  [ -f "$cluster/kubeconfig" ] || die "no control plane in $cluster (scripts/cluster.sh start)"
  grep -q "server: https://$address:" "$cluster/kubeconfig" \
    || die "the control plane must serve on $address (FERROTRAIN_CLUSTER_ADDRESS=$address scripts/cluster.sh start)"
  deps
  local bin started
  bin=$(bash scripts/cluster.sh bin)
  for component in kubelet kube-proxy coredns; do
    [ -x "$bin/$component" ] || die "$component missing in $bin (scripts/cluster.sh build)"
  done
  started=$(date +%s.%N)
  stop 2>/dev/null || true
  rm -rf "$state" && mkdir -p "$state"/{logs,pids,cni,cni-ipam,pod-logs,volume-plugins,kubelet}
  host_address
  certificates
  kubeconfig kubelet-client >"$state/kubelet.kubeconfig"
  kubeconfig kube-proxy >"$state/kube-proxy.kubeconfig"
  containerd_config >"$state/containerd.toml"
  cni_config >"$state/cni/10-ferrotrain.conflist"
  kubelet_config >"$state/kubelet.yaml"
  kube_proxy_config >"$state/kube-proxy.yaml"
  corefile >"$state/Corefile"
  # RBAC's roles for nodes and kube-proxy exist in every cluster; kubeadm binds them like this.
  "${kubectl[@]}" apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ferrotrain-test-nodes}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: system:nodes}]
---
apiVersion: v1
kind: Node
metadata:
  name: $node
  labels: {kubernetes.io/hostname: $node, kubernetes.io/os: linux, ferrotrain.io/real-node: "true"}
spec:
  podCIDR: $pod_cidr
  podCIDRs: [$pod_cidr]
  taints: [{key: ferrotrain.io/real-node, value: "true", effect: NoSchedule}]
YAML
  launch containerd containerd --config "$state/containerd.toml"
  wait_until containerd 30 ctr --address "$state/containerd.sock" version
  images
  launch coredns "$bin/coredns" -conf "$state/Corefile" -dns.port 53
  launch kube-proxy "$bin/kube-proxy" --config="$state/kube-proxy.yaml"
  launch kubelet "$bin/kubelet" --config="$state/kubelet.yaml" --kubeconfig="$state/kubelet.kubeconfig" \
    --root-dir="$state/kubelet" --hostname-override="$node" --node-ip="$address" \
    --node-labels=ferrotrain.io/real-node=true
  wait_until "node $node Ready" 120 node_ready
  wait_until CoreDNS 30 python3 - "$address" <<'PY'
import socket, struct, sys
query = struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"".join(
    bytes([len(p)]) + p.encode() for p in "kubernetes.default.svc.cluster.local".split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
s.sendto(query, (sys.argv[1], 53))
answer = s.recv(512)
sys.exit(0 if struct.unpack(">H", answer[6:8])[0] > 0 else 1)
PY
  log "node: $node ready in $(python3 -c "print(round($(date +%s.%N) - $started, 1))")s; logs in $state/logs"
}

# Imports the pause image and every image tar in .tools/images under the names pods use.
images() {
  local tar name
  [ -f .tools/images/pause.tar ] || bash scripts/images.sh pause
  for tar in .tools/images/*.tar; do
    name=$(cat "${tar%.tar}.name")
    ctr --address "$state/containerd.sock" -n k8s.io images import --all-platforms \
      --index-name "$name" "$tar" >/dev/null
  done
}

stop() {
  [ -d "$state/pids" ] || { ip addr del "$address/32" dev lo 2>/dev/null || true; restore_host; return 0; }
  # Pods first, through the kubelet, so their sandboxes leave the bridge and the IP allocator.
  if [ -f "$state/pids/kubelet" ] && kill -0 "$(cat "$state/pids/kubelet")" 2>/dev/null; then
    "${kubectl[@]}" delete pods -A --field-selector "spec.nodeName=$node" --grace-period=0 --force \
      --wait=false >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do
      [ -z "$(ctr --address "$state/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  for name in kubelet kube-proxy coredns; do
    stop_pid_file "$state/pids/$name"
  done
  # Containers that outlived the kubelet, then their shims, then containerd itself.
  for task in $(ctr --address "$state/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
    ctr --address "$state/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$task" 2>/dev/null || true
  done
  pkill -9 -f "containerd-shim-runc-v2 -namespace k8s.io .*-address $state/containerd.sock" 2>/dev/null || true
  stop_pid_file "$state/pids/containerd"
  # Mounts under the node's directories (volumes, overlay root file systems, shm), deepest first.
  awk -v dir="$state/" 'index($2, dir) == 1 {print $2}' /proc/mounts | sort -r | while read -r mount; do
    umount -l "$mount" 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
  ip addr del "$address/32" dev lo 2>/dev/null || true
  # The kubelet's, kube-proxy's, the CNI plugins' and the guard's rules go with the old rule set.
  restore_host
}

case "${1:-}" in
  deps) deps ;;
  address) address=${2:-$address}; host_address ;;
  start) start ;;
  images) images ;;
  stop) stop ;;
  *) echo "usage: $0 deps|address|start|images|stop" >&2; exit 2 ;;
esac
