//go:build tools

// Package tools pins Kueue's manager, which scripts/kueue.sh builds for the queue scenarios. Kueue
// has a module of its own: it is built against other Kubernetes library versions than the
// control plane.
package tools

import (
	_ "sigs.k8s.io/kueue/cmd/kueue"
)
