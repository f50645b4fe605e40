//go:build linux && cgo && !unilock_intree

package unilock

// The installed library: `make install`, then pkg-config finds unilock.pc (set
// PKG_CONFIG_PATH for a PREFIX that pkg-config does not search).

// #cgo pkg-config: unilock
import "C"
