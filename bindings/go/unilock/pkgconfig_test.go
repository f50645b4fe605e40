//go:build linux && cgo && !unilock_intree

package unilock_test

// builtInTree: the test binary links the installed library (pkg-config).
const builtInTree = false
