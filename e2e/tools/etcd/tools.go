//go:build tools

// Package tools pins the etcd server binary of the e2e test bed; etcd's server
// module replaces its sibling modules with ../ paths, so `go install` refuses.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
