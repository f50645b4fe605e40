//go:build linux && cgo

package unilock

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"time"
)

// Flock has the API and the semantics of github.com/gofrs/flock v0.13's Flock, on
// unilock's FLOCK backend: the same flock(2) locks, so the two exclude each other, and
// a program switches by changing its import to the flock sub-package of this module.
// Differences: TryLockContext and TryRLockContext wait in the kernel instead of
// retrying every retryDelay (the argument is ignored); Locked, RLocked and Stat do not
// wait for a Lock in progress; a directory can be locked with the default flags too
// (gofrs needs SetFlag(os.O_RDONLY) there); the file is opened without O_CREAT when it
// exists (a sticky /tmp refuses O_CREAT on another user's file).
type Flock struct {
	path string
	flag int
	perm fs.FileMode

	// op serializes the operations (gofrs holds its mutex during a blocking Lock too).
	op sync.Mutex
	// state guards the fields below; held briefly, never during a wait. Order: op, state.
	state sync.Mutex
	lk    *Lock
	l     bool
	r     bool
}

// FlockOption configures NewFlock (gofrs/flock's Option).
type FlockOption func(*Flock)

// FlockFlag sets the flags used to open the file (gofrs/flock's SetFlag; default
// os.O_CREATE|os.O_RDONLY). O_CREATE creates a missing file; O_NOFOLLOW refuses a
// symbolic link; the access mode does not matter (flock(2) works on a read-only
// descriptor). Other flags (O_TRUNC, O_APPEND, O_EXCL, ...) are honoured by opening
// the file with os.OpenFile, as gofrs/flock does.
func FlockFlag(flag int) FlockOption { return func(f *Flock) { f.flag = flag } }

// FlockPermissions sets the permissions of a created file (gofrs/flock's
// SetPermissions; default 0600).
func FlockPermissions(perm fs.FileMode) FlockOption { return func(f *Flock) { f.perm = perm } }

// NewFlock returns a Flock for path; nothing is opened until a lock is taken.
func NewFlock(path string, opts ...FlockOption) *Flock {
	f := &Flock{path: path, flag: os.O_CREATE | os.O_RDONLY, perm: 0o600}
	for _, opt := range opts {
		opt(f)
	}
	return f
}

const plainFlags = os.O_CREATE | os.O_RDONLY | os.O_WRONLY | os.O_RDWR | syscall.O_CLOEXEC | syscall.O_NOFOLLOW

func (f *Flock) open() (*Lock, error) {
	if f.flag&^plainFlags == 0 {
		opts := []Option{WithBackend(BackendFlock), WithPerm(f.perm)}
		if f.flag&os.O_CREATE != 0 {
			opts = append(opts, WithFlags(Create))
		}
		if f.flag&syscall.O_NOFOLLOW == 0 {
			opts = append(opts, WithFlags(Follow))
		}
		return Open(f.path, opts...)
	}
	fh, err := os.OpenFile(f.path, f.flag, f.perm)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	return OpenFile(fh, WithBackend(BackendFlock))
}

// Path returns the path given to NewFlock.
func (f *Flock) Path() string { return f.path }

// String returns the path.
func (f *Flock) String() string { return f.path }

// Locked reports whether this Flock holds the exclusive lock.
func (f *Flock) Locked() bool {
	f.state.Lock()
	defer f.state.Unlock()
	return f.l
}

// RLocked reports whether this Flock holds the shared lock.
func (f *Flock) RLocked() bool {
	f.state.Lock()
	defer f.state.Unlock()
	return f.r
}

// Stat describes the lock file: through the open descriptor while a lock is held,
// else by path.
func (f *Flock) Stat() (fs.FileInfo, error) {
	f.state.Lock()
	lk := f.lk
	f.state.Unlock()
	if lk != nil {
		if fd := lk.Fd(); fd >= 0 {
			if dup, err := syscall.Dup(fd); err == nil {
				fh := os.NewFile(uintptr(dup), f.path)
				defer fh.Close()
				return fh.Stat()
			}
		}
	}
	return os.Stat(f.path)
}

// Lock takes the exclusive lock, waiting as long as it takes. It returns at once when
// the exclusive lock is held already; with the shared lock held it converts it (not
// atomically: flock(2) releases the shared lock first).
func (f *Flock) Lock() error {
	_, err := f.take(context.Background(), &f.l, Exclusive, true)
	return err
}

// RLock takes the shared lock, waiting as long as it takes.
func (f *Flock) RLock() error {
	_, err := f.take(context.Background(), &f.r, Shared, true)
	return err
}

// TryLock takes the exclusive lock if it is free now: (true, nil) when taken (or held
// already), (false, nil) when another holds it.
func (f *Flock) TryLock() (bool, error) { return f.take(context.Background(), &f.l, Exclusive, false) }

// TryRLock takes the shared lock if it can now.
func (f *Flock) TryRLock() (bool, error) { return f.take(context.Background(), &f.r, Shared, false) }

// TryLockContext takes the exclusive lock, waiting until ctx ends: (true, nil), or
// (false, ctx.Err()). The wait sleeps in the kernel and ends as soon as the lock is
// released; retryDelay is accepted for gofrs/flock's API and not used.
func (f *Flock) TryLockContext(ctx context.Context, retryDelay time.Duration) (bool, error) {
	return f.takeContext(ctx, &f.l, Exclusive)
}

// TryRLockContext takes the shared lock, waiting until ctx ends; see TryLockContext.
func (f *Flock) TryRLockContext(ctx context.Context, retryDelay time.Duration) (bool, error) {
	return f.takeContext(ctx, &f.r, Shared)
}

func (f *Flock) takeContext(ctx context.Context, flag *bool, mode Mode) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	ok, err := f.take(ctx, flag, mode, true)
	if err != nil && ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return false, ctx.Err()
	}
	return ok, err
}

func (f *Flock) take(ctx context.Context, flag *bool, mode Mode, wait bool) (bool, error) {
	f.op.Lock()
	defer f.op.Unlock()
	f.state.Lock()
	held, lk := *flag, f.lk
	f.state.Unlock()
	if held {
		return true, nil
	}
	if lk == nil {
		var err error
		if lk, err = f.open(); err != nil {
			return false, err
		}
		f.setLock(lk)
	}
	var err error
	if wait {
		err = lk.Lock(ctx, mode)
	} else {
		err = lk.TryLock(mode)
	}
	if err == nil {
		f.state.Lock()
		*flag = true
		f.state.Unlock()
		return true, nil
	}
	if errors.Is(err, syscall.ENOLCK) {
		// A flock upgrade lost the shared lock to another process: nothing is held.
		f.reset()
	} else {
		f.closeIfUnlocked()
	}
	if !wait && errors.Is(err, ErrWouldBlock) {
		return false, nil
	}
	return false, err
}

func (f *Flock) setLock(lk *Lock) {
	f.state.Lock()
	f.lk = lk
	f.state.Unlock()
}

// closeIfUnlocked closes the handle when no lock is held (as gofrs closes its file).
func (f *Flock) closeIfUnlocked() {
	f.state.Lock()
	lk := f.lk
	if f.l || f.r || lk == nil {
		f.state.Unlock()
		return
	}
	f.lk = nil
	f.state.Unlock()
	_ = lk.Close()
}

func (f *Flock) reset() {
	f.state.Lock()
	lk := f.lk
	f.lk, f.l, f.r = nil, false, false
	f.state.Unlock()
	if lk != nil {
		_ = lk.Close()
	}
}

// Unlock releases the lock (shared or exclusive) and closes the file; it returns nil
// when nothing is held. The file is not removed.
func (f *Flock) Unlock() error {
	f.op.Lock()
	defer f.op.Unlock()
	f.state.Lock()
	lk, held := f.lk, f.l || f.r
	f.state.Unlock()
	if !held || lk == nil {
		return nil
	}
	if err := lk.Unlock(); err != nil {
		return err
	}
	f.reset()
	return nil
}

// Close is Unlock: it releases the lock and closes the file.
func (f *Flock) Close() error { return f.Unlock() }
