#!/usr/bin/env bash
# Offline checks of the Helm chart and the e2e script with real tools, installed on first use:
# helm 3 and helm 4 (scripts/install-tools.sh, into .tools/), kubernetes-validate (PyPI) and the
# Debian package of shellcheck. Prints the helm 4 path for the Rust tests.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools=.tools/bin
mkdir -p "$tools"

bash scripts/install-tools.sh
command -v kubernetes-validate >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate >&2
if ! command -v shellcheck >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck; } >&2
fi

chart=charts/ferrotrain
value_sets=(
  ""
  "--set minio.enabled=true --set serviceMonitor.enabled=true --set replicaCount=3 --set admissionPolicy.enabled=true --set admissionPolicy.namespaceSelector.matchLabels.team=ml --set progressTLS.enabled=true --set progressTLS.secretName=ferrotrain-tls"
  "--set watchNamespace=ml --set networkPolicy.enabled=false --set podDisruptionBudget.enabled=false --set workerNetworkPolicy.enabled=false --set aggregateToDefaultRoles=false"
)
for helm in "$tools/helm3" "$tools/helm4"; do
  for values in "${value_sets[@]}"; do
    # shellcheck disable=SC2086 # the value sets are word lists on purpose
    "$helm" lint --strict --quiet "$chart" $values >&2
  done
done
# Rendered as on a cluster with the Prometheus Operator, so the ServiceMonitor is validated too.
value_sets+=("--set serviceMonitor.enabled=true --api-versions monitoring.coreos.com/v1/ServiceMonitor")
for values in "${value_sets[@]}"; do
  for version in 1.30.0 1.37.0; do
    # shellcheck disable=SC2086
    "$tools/helm4" template ferrotrain "$chart" --namespace ferrotrain --include-crds $values \
      | kubernetes-validate --strict --quiet -k "$version" - >&2
  done
done
bash -n tests/e2e/run.sh
shellcheck tests/e2e/run.sh scripts/*.sh .ci/run >&2
echo "$PWD/$tools/helm4"
