//go:build linux && cgo && unilock_intree

package unilock

// The library built in this source tree (`cargo build --release`), without
// installing it: `go test -tags unilock_intree ./...`. The rpath lets the test
// binaries find target/release/libunilock.so at run time.

// #cgo CFLAGS: -I${SRCDIR}/../../../include
// #cgo LDFLAGS: -L${SRCDIR}/../../../target/release -Wl,-rpath,${SRCDIR}/../../../target/release -lunilock
import "C"
