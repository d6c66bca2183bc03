//go:build tools

// Package tools pins the commands scripts/cluster.sh builds, so `go mod tidy` keeps their modules.
// One module for all of them: the packages they share (client-go, grpc, protobuf, etcd's client)
// are resolved to one version and compiled once.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
