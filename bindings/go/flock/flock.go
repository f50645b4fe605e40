// Package flock is a drop-in for github.com/gofrs/flock (v0.13) over libunilock's
// FLOCK backend: change the import path from "github.com/gofrs/flock" to
// "github.com/unilock/unilock/bindings/go/flock" and nothing else. The locks are the
// same flock(2) locks, so programs using either exclude each other; TryLockContext and
// TryRLockContext wait in the kernel instead of polling every retryDelay.
package flock

import (
	"io/fs"

	"github.com/unilock/unilock/bindings/go/unilock"
)

// Flock is the lock on one file; see unilock.Flock.
type Flock = unilock.Flock

// Option configures New.
type Option = unilock.FlockOption

// New returns a Flock for path (opened when a lock is first taken, with
// os.O_CREATE|os.O_RDONLY and permissions 0600 unless the options say otherwise).
func New(path string, opts ...Option) *Flock { return unilock.NewFlock(path, opts...) }

// NewFlock returns a Flock for path.
//
// Deprecated: Use New instead (as in gofrs/flock).
func NewFlock(path string) *Flock { return New(path) }

// SetFlag sets the flags used to open the file.
func SetFlag(flag int) Option { return unilock.FlockFlag(flag) }

// SetPermissions sets the permissions of a created file.
func SetPermissions(perm fs.FileMode) Option { return unilock.FlockPermissions(perm) }
