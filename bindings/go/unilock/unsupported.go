//go:build !linux || !cgo

package unilock

// This package is a cgo binding of libunilock, a Linux library: it builds only on
// Linux with cgo enabled. Off Linux, or with CGO_ENABLED=0 (the default when
// cross-compiling or when no C compiler is found), every other file of the package is
// left out and the build stops at the line below, whose name says what is needed:
//
//   - Linux (GOOS=linux);
//   - cgo: CGO_ENABLED=1 and a C compiler (gcc or clang, or CC set to one);
//   - libunilock installed where pkg-config finds it (`make install` from the source
//     tree; PKG_CONFIG_PATH=PREFIX/lib/pkgconfig for a private PREFIX), or the source
//     tree's build with `-tags unilock_intree`.
//
// See bindings/go/README.md, "Install".
var _ = unilock_needs_Linux_and_cgo__set_CGO_ENABLED_1_install_a_C_compiler_and_libunilock_found_by_pkg_config
