//go:build tools

// Package tools pins the Kubernetes binaries the e2e test bed builds from the
// Go module proxy; k8s.io/kubernetes replaces its staging modules with local
// paths, so `go install ...@version` refuses and this module re-points them.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
