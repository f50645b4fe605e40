//go:build linux && cgo && unilock_intree

package unilock_test

// builtInTree: the test binary links the library in this source tree.
const builtInTree = true
