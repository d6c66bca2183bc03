#!/usr/bin/env bash
# Builds Ferrotrain's container images without a container engine, as OCI image tars in
# .tools/images that `ctr images import` (scripts/node.sh images) and any OCI registry tool read.
# The images hold what trainer/Dockerfile and operator/Dockerfile put in theirs: the same binary
# at the same path, user, entrypoint, command, environment, exposed port, data and CA bundle, on
# the same Debian release's C library (tests/tests/images.rs checks that the two recipes agree).
#   scripts/images.sh             # trainer and operator images (cargo's dev profile, see below)
#   scripts/images.sh pause       # only the pod sandbox image a node needs
# FERROTRAIN_IMAGE_PROFILE=release builds optimised binaries as the Dockerfiles do; the default,
# dev, reuses the test build's dependencies (the trainer is optimised in both).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=.tools/images
profile=${FERROTRAIN_IMAGE_PROFILE:-dev}
target=${CARGO_TARGET_DIR:-target}
version=$(awk -F'"' '/^appVersion:/ {print $2}' charts/ferrotrain/Chart.yaml)
mkdir -p "$out"

log() { printf '%s\n' "$*" >&2; }

# The binary's shared libraries from this machine, at the paths its loader looks them up.
copy_libraries() { # binary, rootfs
  local lib
  for lib in $(ldd "$1" | awk '/=>/ {print $3} !/=>/ && /^[ \t]*\// {print $1}'); do
    mkdir -p "$2$(dirname "$lib")"
    cp -L "$lib" "$2$lib"
  done
}

base_rootfs() { # rootfs
  local rootfs=$1
  rm -rf "$rootfs" && mkdir -p "$rootfs"/{etc/ssl/certs,tmp,usr/local/bin}
  chmod 1777 "$rootfs/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nferrotrain:x:65532:65532::/nonexistent:/sbin/nologin\n' \
    >"$rootfs/etc/passwd"
  printf 'root:x:0:\nferrotrain:x:65532:\n' >"$rootfs/etc/group"
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
}

image() { # name reference, rootfs, config JSON
  local name=$1 file
  file=$out/$(basename "${name%%:*}")
  printf '%s\n' "$3" >"$out/config.json"
  python3 scripts/oci_image.py "$2" "$file.tar" "$name" --config "$out/config.json" >&2
  echo "docker.io/library/$name" >"$file.name"
  rm -f "$out/config.json"
}

binary() { # cargo profile, package, binary, cargo flags...
  local profile=$1 package=$2 bin=$3 dir=$1
  shift 3
  [ "$profile" = dev ] && dir=debug
  cargo build --locked --profile "$profile" -p "$package" --bin "$bin" "$@" >&2
  strip -o "$out/$bin" "$target/$dir/$bin"
  echo "$out/$bin"
}

trainer() {
  local rootfs=$out/trainer-rootfs bin
  bin=$(binary "$profile" ferrotrain-trainer ferrotrain-trainer)
  base_rootfs "$rootfs"
  install -m 0755 "$bin" "$rootfs/usr/local/bin/ferrotrain-trainer"
  copy_libraries "$bin" "$rootfs"
  mkdir -p "$rootfs/opt/ferrotrain/data"
  cp -r data/mnist "$rootfs/opt/ferrotrain/data/mnist"
  image "ferrotrain-trainer:$version" "$rootfs" '{
    "User": "65532:65532",
    "Entrypoint": ["/usr/local/bin/ferrotrain-trainer"],
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "FERROTRAIN_DATA_DIR=/opt/ferrotrain/data"]}'
  rm -rf "$rootfs" "$bin"
}

operator() {
  local rootfs=$out/operator-rootfs bin
  # Without the embedded trainer, and optimised for size where optimised, as operator/Dockerfile
  # builds it.
  local build=$profile
  [ "$profile" = release ] && build=operator
  bin=$(binary "$build" ferrotrain ferrotrain --no-default-features)
  base_rootfs "$rootfs"
  install -m 0755 "$bin" "$rootfs/usr/local/bin/ferrotrain"
  copy_libraries "$bin" "$rootfs"
  image "ferrotrain:$version" "$rootfs" '{
    "User": "65532:65532",
    "Entrypoint": ["/usr/local/bin/ferrotrain"],
    "Cmd": ["operator"],
    "ExposedPorts": {"8080/tcp": {}},
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}'
  rm -rf "$rootfs" "$bin"
}

# The pod sandbox: Kubernetes' own pause program, compiled static from the pinned module.
pause() {
  local rootfs=$out/pause-rootfs source
  source="$(cd tests/cluster/components && go list -mod=readonly -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  rm -rf "$rootfs" && mkdir -p "$rootfs"
  gcc -Os -static -o "$rootfs/pause" "$source"
  strip "$rootfs/pause"
  image "ferrotrain/pause:0.1" "$rootfs" '{"User": "65535:65535", "Entrypoint": ["/pause"]}'
  # The sandbox image is looked up under the name containerd's configuration gives it.
  echo "docker.io/ferrotrain/pause:0.1" >"$out/pause.name"
  rm -rf "$rootfs"
}

case "${1:-all}" in
  all) pause; trainer; operator ;;
  pause) pause ;;
  trainer) trainer ;;
  operator) operator ;;
  *) echo "usage: $0 [all|pause|trainer|operator]" >&2; exit 2 ;;
esac
ls -l "$out"/*.tar >&2
