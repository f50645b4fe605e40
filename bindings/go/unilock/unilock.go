//go:build linux && cgo

// Package unilock is the Go binding of libunilock: advisory file locking for Linux
// over flock(2), open file description (OFD) locks and POSIX record locks, with
// shared and exclusive modes, byte ranges, waits that sleep in the kernel and end on a
// context's cancellation or deadline, and queries of who holds a lock; and, with
// BackendEtcd, locks in an etcd cluster for processes on several machines.
//
//	l, err := unilock.Open("/var/lock/app.lock", unilock.WithCreate(0o600))
//	if err != nil { ... }
//	defer l.Close()
//	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
//	defer cancel()
//	if err := l.Lock(ctx, unilock.Exclusive); err != nil { ... }
//
// Flock is a drop-in for github.com/gofrs/flock (see the flock sub-package, whose
// names are gofrs/flock's): same API, same flock(2) locks, but its waits sleep in the
// kernel instead of polling.
//
// # Errors
//
// Failures are *fs.PathError values whose Err is a syscall.Errno, so errors.Is works
// with the errno and the os/fs sentinels:
//   - errors.Is(err, ErrWouldBlock), errors.Is(err, syscall.EAGAIN) or
//     syscall.EWOULDBLOCK: TryLock found the lock held;
//   - a Lock whose context ends returns ctx.Err() itself: err == context.Canceled or
//     context.DeadlineExceeded; errors.Is(err, ErrTimeout) and os.IsTimeout(err) hold
//     for a deadline;
//   - errors.Is(err, ErrCanceled) (syscall.ECANCELED): Cancel ended the wait;
//   - errors.Is(err, ErrLockLost) (syscall.ENOLCK): the handle lost the lock it held
//     (an ETCD lease that expired or was revoked) and holds nothing;
//   - errors.Is(err, fs.ErrNotExist), fs.ErrPermission, syscall.EOPNOTSUPP (a byte
//     range on a FLOCK handle, a shared ETCD lock), syscall.EINVAL, ...; fs.ErrClosed
//     after Close.
//
// # Across machines
//
// With WithBackend(BackendEtcd) the path given to Open is a lock name in an etcd
// cluster (WithEndpoints, WithLeaseTTL, WithCAFile, WithCertFile, WithKeyFile,
// WithUser, WithPassword), exclusive only; the keys and the queue are those of
// etcd's concurrency.Mutex, so `etcdctl lock NAME` and clientv3 users exclude it. The
// lock lives on a lease that the library renews; once it is lost, the next call fails
// with ErrLockLost. Fence gives the lock's fencing token.
//
// # Goroutines and deadlock detection
//
// libunilock attributes a lock to the OS thread that took it and fails a wait that
// only the waiting thread could end with EDEADLK. Goroutines move between threads, so
// that verdict means nothing in Go: when a wait gets EDEADLK, the binding waits again
// on a new OS thread (which holds nothing). A goroutine that waits for a lock it holds
// itself through another handle therefore waits until its context ends, as with
// gofrs/flock; give such waits a deadline.
package unilock

/*
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unilock.h>

#if UNILOCK_VERSION_MAJOR != 0
#error "this binding speaks unilock's ABI 0: the unilock.h found has another major version"
#endif

// Runs unilock_lock on a new thread and waits for it: a thread that holds no lock, so
// that libunilock's per-thread deadlock detection cannot confuse goroutines. The
// library identifies threads by pthread_self, which a new thread may share with an
// exited one whose locks are still attributed to it: on EDEADLK the new thread tries
// again from another new thread, started while it is alive (so with another
// identity), up to GO_UNILOCK_MAX_DEPTH threads deep.
#define GO_UNILOCK_MAX_DEPTH 8

struct go_unilock_call {
	unilock *l;
	unilock_mode mode;
	uint64_t start, len;
	int64_t timeout_ms;
	int depth;
	int rc;
};

static int go_unilock_on_new_thread(struct go_unilock_call *c);

static void *go_unilock_call_main(void *p) {
	struct go_unilock_call *c = p;
	c->rc = unilock_lock(c->l, c->mode, c->start, c->len, c->timeout_ms);
	if (c->rc == -EDEADLK && c->depth < GO_UNILOCK_MAX_DEPTH) {
		c->depth++;
		c->rc = go_unilock_on_new_thread(c);
	}
	return NULL;
}

static int go_unilock_on_new_thread(struct go_unilock_call *c) {
	pthread_t t;
	int e = pthread_create(&t, NULL, go_unilock_call_main, c);
	if (e != 0)
		return -e;
	pthread_join(t, NULL);
	return c->rc;
}

static int go_unilock_lock_on_new_thread(unilock *l, unilock_mode mode, uint64_t start,
                                         uint64_t len, int64_t timeout_ms) {
	struct go_unilock_call c = { l, mode, start, len, timeout_ms, 1, 0 };
	return go_unilock_on_new_thread(&c);
}
*/
import "C"

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Version is the version of the running library, "MAJOR.MINOR.PATCH".
func Version() string { return C.GoString(C.unilock_version()) }

// HeaderVersionMajor is the major version of unilock.h this package was compiled
// with (an #error stops the build for any other).
const HeaderVersionMajor = C.UNILOCK_VERSION_MAJOR

// Mode is a lock mode.
type Mode uint32

const (
	// Shared is a read lock: any number of shared holders.
	Shared Mode = C.UNILOCK_SHARED
	// Exclusive is a write lock: one holder.
	Exclusive Mode = C.UNILOCK_EXCLUSIVE
)

func (m Mode) String() string {
	switch m {
	case Shared:
		return "shared"
	case Exclusive:
		return "exclusive"
	}
	return fmt.Sprintf("Mode(%d)", uint32(m))
}

// Backend is a set of locking mechanisms (bits); see the README's table of who
// conflicts with whom.
type Backend uint32

const (
	// BackendDefault is FLOCK.
	BackendDefault Backend = C.UNILOCK_BACKEND_DEFAULT
	// BackendFlock is flock(2): whole files; excludes flock(1), gofrs/flock, Python filelock.
	BackendFlock Backend = C.UNILOCK_BACKEND_FLOCK
	// BackendOFD is open file description locks (F_OFD_SETLK): byte ranges.
	BackendOFD Backend = C.UNILOCK_BACKEND_OFD
	// BackendPOSIX is POSIX record locks (F_SETLK); each handle is its own owner.
	BackendPOSIX Backend = C.UNILOCK_BACKEND_POSIX
	// BackendDotlock is lock files by existence (liblockfile, lockfile(1), mailbox .lock files).
	BackendDotlock Backend = C.UNILOCK_BACKEND_DOTLOCK
	// BackendEtcd is a lock in an etcd cluster, across machines: the path is a lock
	// name (etcd's concurrency.Mutex keys NAME/<lease>, as `etcdctl lock NAME`).
	// Exclusive only; alone only.
	BackendEtcd Backend = C.UNILOCK_BACKEND_ETCD
)

// String names a single backend as the library, the command and the Python binding
// do: "FLOCK" (also for BackendDefault, which selects it), "OFD", "POSIX", "DOTLOCK",
// "ETCD".
func (b Backend) String() string {
	switch b {
	case BackendDefault, BackendFlock:
		return "FLOCK"
	case BackendOFD:
		return "OFD"
	case BackendPOSIX:
		return "POSIX"
	case BackendDotlock:
		return "DOTLOCK"
	case BackendEtcd:
		return "ETCD"
	}
	return fmt.Sprintf("Backend(%#x)", uint32(b))
}

// Flags are unilock_options.flags bits.
type Flags uint32

const (
	// Create creates the file when missing (see WithPerm).
	Create Flags = C.UNILOCK_CREATE
	// Follow follows a symbolic link in the last component (refused by default: ELOOP).
	Follow Flags = C.UNILOCK_FOLLOW
	// Inherit keeps the descriptor across exec (close-on-exec by default).
	Inherit Flags = C.UNILOCK_INHERIT
	// Unlink deletes the lock file once no lock is held on it, race-free (FLOCK, OFD,
	// POSIX; see UNILOCK_UNLINK in unilock.h).
	Unlink Flags = C.UNILOCK_UNLINK
	// Fair hands the lock to the longest waiter among Fair handles on the file
	// (UNILOCK_FAIR: first come, first served; the releaser never barges).
	Fair Flags = C.UNILOCK_FAIR
)

var (
	// ErrWouldBlock is what TryLock returns (wrapped in *fs.PathError) when the lock
	// is held: syscall.EAGAIN, which is also syscall.EWOULDBLOCK.
	ErrWouldBlock error = syscall.EAGAIN
	// ErrTimeout matches a Lock whose context's deadline passed: the error returned is
	// context.DeadlineExceeded itself.
	ErrTimeout error = context.DeadlineExceeded
	// ErrCanceled matches a Lock ended by Cancel (syscall.ECANCELED). A Lock ended by
	// its context's cancellation returns context.Canceled instead.
	ErrCanceled error = syscall.ECANCELED
	// ErrLockLost matches a call on a handle that lost the lock it held, and holds
	// nothing now (syscall.ENOLCK): an ETCD lease that expired (the process was
	// paused, or cut off from etcd, for a whole lease TTL) or was revoked, after
	// which another process may hold the lock; also Fence on a handle that holds no
	// lock, and a POSIX handle used in a forked child.
	ErrLockLost error = syscall.ENOLCK
)

type options struct {
	backends   uint32
	flags      uint32
	mode       uint32
	staleAfter uint32
	// ETCD; etcd lists the ETCD options given, for Open's check of the backend.
	leaseTTL                                   uint32
	endpoints, caFile, certFile, keyFile, user string
	password                                   secret
	etcd                                       []string
}

// secret is a password: no fmt verb prints it.
type secret string

func (secret) String() string   { return "<password hidden>" }
func (secret) GoString() string { return "<password hidden>" }

// Option configures Open.
type Option func(*options)

// WithBackend chooses the mechanism (BackendFlock by default); DOTLOCK may be combined
// with one other (BackendDotlock|BackendPOSIX).
func WithBackend(b Backend) Option { return func(o *options) { o.backends = uint32(b) } }

// WithFlags adds flags (Create, Follow, Inherit, Unlink, Fair).
func WithFlags(f Flags) Option { return func(o *options) { o.flags |= uint32(f) } }

// WithPerm sets the permissions of a created file (0600 by default; the umask applies).
func WithPerm(perm fs.FileMode) Option {
	return func(o *options) { o.mode = uint32(perm.Perm()) }
}

// WithCreate is WithFlags(Create) and WithPerm(perm).
func WithCreate(perm fs.FileMode) Option {
	return func(o *options) { o.flags |= uint32(Create); o.mode = uint32(perm.Perm()) }
}

// WithStaleAfter makes a DOTLOCK lock file stale when not refreshed (Touch) for d.
func WithStaleAfter(d time.Duration) Option {
	return func(o *options) { o.staleAfter = uint32((d + time.Second - 1) / time.Second) }
}

// WithEndpoints gives the etcd cluster's client URLs (BackendEtcd), e.g.
// "https://10.0.0.1:2379"; "host:port" means http://. Without it: the environment's
// UNILOCK_ETCD_ENDPOINTS, else ETCDCTL_ENDPOINTS, else http://127.0.0.1:2379.
func WithEndpoints(urls ...string) Option {
	return func(o *options) {
		o.endpoints = strings.Join(urls, ",")
		o.etcd = append(o.etcd, "WithEndpoints")
	}
}

// WithLeaseTTL sets the etcd lease's TTL (BackendEtcd; whole seconds, rounded up;
// 10 s by default). The library renews the lease every third of it while the handle
// waits or holds; a holder that cannot renew it for a whole TTL loses the lock.
func WithLeaseTTL(d time.Duration) Option {
	return func(o *options) {
		o.leaseTTL = uint32((d + time.Second - 1) / time.Second)
		o.etcd = append(o.etcd, "WithLeaseTTL")
	}
}

// WithCAFile names a PEM file of the CA certificates that sign the etcd servers'
// certificates (BackendEtcd over https://; without it: $UNILOCK_ETCD_CACERT, else
// $ETCDCTL_CACERT, else the usual web roots).
func WithCAFile(path string) Option {
	return func(o *options) { o.caFile = path; o.etcd = append(o.etcd, "WithCAFile") }
}

// WithCertFile names a PEM client certificate, for an etcd cluster that checks them
// (BackendEtcd; needs WithKeyFile; without it: $UNILOCK_ETCD_CERT, else $ETCDCTL_CERT).
func WithCertFile(path string) Option {
	return func(o *options) { o.certFile = path; o.etcd = append(o.etcd, "WithCertFile") }
}

// WithKeyFile names the client certificate's PEM private key (BackendEtcd; without
// it: $UNILOCK_ETCD_KEY, else $ETCDCTL_KEY).
func WithKeyFile(path string) Option {
	return func(o *options) { o.keyFile = path; o.etcd = append(o.etcd, "WithKeyFile") }
}

// WithUser names the etcd user to authenticate as (BackendEtcd; without it:
// $UNILOCK_ETCD_USER, else $ETCDCTL_USER, either of which may be "name:password").
func WithUser(user string) Option {
	return func(o *options) { o.user = user; o.etcd = append(o.etcd, "WithUser") }
}

// WithPassword gives the etcd user's password (BackendEtcd; without it:
// $UNILOCK_ETCD_PASSWORD, else $ETCDCTL_PASSWORD). It is passed to the library for
// Open only, and shown by no error or message.
func WithPassword(password string) Option {
	return func(o *options) { o.password = secret(password); o.etcd = append(o.etcd, "WithPassword") }
}

// c fills a unilock_options; free releases its C strings, once unilock_open (which
// keeps none of them) has returned.
func (o *options) c() (co C.unilock_options, free func(), err error) {
	C.unilock_options_init(&co)
	co.backends = C.uint32_t(o.backends)
	co.flags = C.uint32_t(o.flags)
	co.mode = C.uint32_t(o.mode)
	co.stale_after_s = C.uint32_t(o.staleAfter)
	co.lease_ttl_s = C.uint32_t(o.leaseTTL)
	if len(o.etcd) > 0 && o.backends&uint32(BackendEtcd) == 0 {
		// The name would otherwise be a file of this machine, locked here only.
		return co, func() {}, optionError(strings.Join(o.etcd, ", ") + " need WithBackend(BackendEtcd)")
	}
	var strs []*C.char
	free = func() {
		for _, p := range strs {
			C.free(unsafe.Pointer(p))
		}
	}
	for _, f := range []struct {
		name  string
		value string
		dst   **C.char
	}{
		{"WithEndpoints", o.endpoints, &co.endpoints},
		{"WithCAFile", o.caFile, &co.ca_file},
		{"WithCertFile", o.certFile, &co.cert_file},
		{"WithKeyFile", o.keyFile, &co.key_file},
		{"WithUser", o.user, &co.user},
		{"WithPassword", string(o.password), &co.password},
	} {
		if f.value == "" {
			continue // NULL: the library reads the environment
		}
		if strings.IndexByte(f.value, 0) >= 0 {
			free()
			return co, func() {}, optionError(f.name + ": a NUL byte would cut the string")
		}
		p := C.CString(f.value)
		strs = append(strs, p)
		*f.dst = p
	}
	return co, free, nil
}

// optionError is an invalid combination of options: it matches syscall.EINVAL.
type optionError string

func (e optionError) Error() string { return string(e) }
func (e optionError) Unwrap() error { return syscall.EINVAL }

// Lock is an open lock handle: one lock owner on one file. Two Locks on one file
// exclude each other, in one goroutine too; closing one never releases another's
// locks. Its methods are safe for concurrent use; one Lock or Unlock runs at a time
// per handle (a second one at the same moment gets EBUSY). Close releases what it holds.
type Lock struct {
	path string
	// mu is held for reading by every call that uses the handle, for writing by Close.
	mu sync.RWMutex
	h  atomic.Pointer[C.unilock]
}

// Open opens path for locking (no lock is taken). Without WithFlags(Create) or
// WithCreate the file must exist.
func Open(path string, opts ...Option) (*Lock, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	// C would see the path cut at a NUL byte, another file: refused as os.Open does.
	if strings.IndexByte(path, 0) >= 0 {
		return nil, &fs.PathError{Op: "open", Path: path, Err: syscall.EINVAL}
	}
	co, free, err := o.c()
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer free()
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var h *C.unilock
	if rc := C.unilock_open(cpath, &co, &h); rc < 0 {
		return nil, pathError("open", path, rc)
	}
	return newLock(path, h), nil
}

// OpenFile makes a handle on f's open file description (the descriptor is duplicated;
// the caller keeps f). FLOCK and OFD locks taken through it belong to that description.
func OpenFile(f *os.File, opts ...Option) (*Lock, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	co, free, err := o.c()
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: f.Name(), Err: err}
	}
	defer free()
	var h *C.unilock
	rc := C.unilock_open_fd(C.int(f.Fd()), &co, &h)
	runtime.KeepAlive(f)
	if rc < 0 {
		return nil, pathError("open", f.Name(), rc)
	}
	return newLock(f.Name(), h), nil
}

func newLock(path string, h *C.unilock) *Lock {
	l := &Lock{path: path}
	l.h.Store(h)
	runtime.SetFinalizer(l, (*Lock).Close)
	return l
}

func pathError(op, path string, rc C.int) error {
	return &fs.PathError{Op: op, Path: path, Err: syscall.Errno(-rc)}
}

// use returns the handle with l.mu held for reading, or fs.ErrClosed.
func (l *Lock) use(op string) (*C.unilock, error) {
	l.mu.RLock()
	h := l.h.Load()
	if h == nil {
		l.mu.RUnlock()
		return nil, &fs.PathError{Op: op, Path: l.path, Err: fs.ErrClosed}
	}
	return h, nil
}

// Path is the path the handle was opened with.
func (l *Lock) Path() string { return l.path }

// Lock takes mode on the whole file, waiting until ctx ends. See LockRange.
func (l *Lock) Lock(ctx context.Context, mode Mode) error {
	return l.LockRange(ctx, mode, 0, 0)
}

// LockRange takes mode on length bytes from start (length 0: to the end of the file
// and beyond), or converts what the handle holds there. It waits in the kernel — no
// polling — until the lock is granted or ctx ends: ctx's cancellation cancels the
// wait through unilock_cancel, and its deadline is the wait's timeout. When ctx ends
// first it returns ctx.Err() and holds nothing new (a grant that won the race is
// kept and nil returned). A context already ended returns ctx.Err() without trying.
// A FLOCK handle takes only (0, 0).
func (l *Lock) LockRange(ctx context.Context, mode Mode, start, length uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := l.use("lock")
	if err != nil {
		return err
	}
	defer l.mu.RUnlock()
	// A try first: the uncontended case needs no watcher.
	rc := C.unilock_lock(h, C.unilock_mode(mode), C.uint64_t(start), C.uint64_t(length), 0)
	if rc != -C.EAGAIN {
		return l.result("lock", rc)
	}
	deadline, hasDeadline := ctx.Deadline()
	var done, watcherDone chan struct{}
	if ctx.Done() != nil {
		done, watcherDone = make(chan struct{}), make(chan struct{})
		go watch(ctx, h, done, watcherDone)
	}
	onNewThread := false
	for {
		timeout := C.int64_t(-1)
		if hasDeadline {
			left := time.Until(deadline)
			if left <= 0 {
				rc = -C.ETIMEDOUT
				break
			}
			timeout = C.int64_t((left + time.Millisecond - 1) / time.Millisecond)
		}
		if onNewThread {
			rc = C.go_unilock_lock_on_new_thread(h, C.unilock_mode(mode), C.uint64_t(start), C.uint64_t(length), timeout)
		} else {
			rc = C.unilock_lock(h, C.unilock_mode(mode), C.uint64_t(start), C.uint64_t(length), timeout)
		}
		// EDEADLK names the OS thread, not this goroutine: wait again on a new thread,
		// unless the context ended (its watcher's cancel may have been spent already).
		if rc != -C.EDEADLK || onNewThread || ctx.Err() != nil {
			break
		}
		onNewThread = true
	}
	if done != nil {
		close(done)
		// No cancel of this call may land on a later call of this handle.
		<-watcherDone
	}
	switch {
	case rc == 0:
		return nil
	case (rc == -C.ECANCELED || rc == -C.EDEADLK) && ctx.Err() != nil:
		return ctx.Err()
	case rc == -C.ETIMEDOUT && hasDeadline:
		if err := ctx.Err(); err != nil {
			return err
		}
		return context.DeadlineExceeded
	}
	return pathError("lock", l.path, rc)
}

// watch cancels the lock call in progress on h when ctx ends, until done is closed.
// A cancel lands only on a call in progress (unilock_cancel returns 1) and is never
// remembered, so it repeats while it returns 0 and the call has not returned.
func watch(ctx context.Context, h *C.unilock, done <-chan struct{}, exited chan<- struct{}) {
	defer close(exited)
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	for i := 0; ; i++ {
		if C.unilock_cancel(h) == 1 {
			return
		}
		select {
		case <-done:
			return
		default:
		}
		if i < 16 {
			runtime.Gosched()
		} else {
			time.Sleep(20 * time.Microsecond)
		}
	}
}

// TryLock takes mode on the whole file if it is free now; otherwise it returns an
// error matching ErrWouldBlock.
func (l *Lock) TryLock(mode Mode) error { return l.TryLockRange(mode, 0, 0) }

// TryLockRange is LockRange without waiting: an error matching ErrWouldBlock when held.
func (l *Lock) TryLockRange(mode Mode, start, length uint64) error {
	h, err := l.use("lock")
	if err != nil {
		return err
	}
	defer l.mu.RUnlock()
	rc := C.unilock_lock(h, C.unilock_mode(mode), C.uint64_t(start), C.uint64_t(length), 0)
	return l.result("lock", rc)
}

func (l *Lock) result(op string, rc C.int) error {
	if rc < 0 {
		return pathError(op, l.path, rc)
	}
	return nil
}

// Unlock releases everything the handle holds.
func (l *Lock) Unlock() error { return l.UnlockRange(0, 0) }

// UnlockRange releases length bytes from start ((0, 0): everything); bytes not held
// are ignored.
func (l *Lock) UnlockRange(start, length uint64) error {
	h, err := l.use("unlock")
	if err != nil {
		return err
	}
	defer l.mu.RUnlock()
	return l.result("unlock", C.unilock_unlock(h, C.uint64_t(start), C.uint64_t(length)))
}

// Cancel ends the Lock call in progress on this handle, from any goroutine: it
// returns an error matching ErrCanceled. It reports whether a call was in progress; a
// Cancel with none in progress does nothing and is not remembered.
func (l *Lock) Cancel() bool {
	h, err := l.use("cancel")
	if err != nil {
		return false
	}
	defer l.mu.RUnlock()
	return C.unilock_cancel(h) == 1
}

// Holder is one lock on a file and who holds it. ETCD: one key of the lock's queue,
// Start its create revision (the holder's is the fencing token), Pid, Command and
// Host what the key's value says.
type Holder struct {
	Backend Backend // the one mechanism that holds it
	Mode    Mode
	Start   uint64 // first byte; ETCD: the key's create revision
	Len     uint64 // 0: to the end of the file and beyond
	Pid     int    // a live process that holds it; -1 when it cannot be known
	Self    bool   // this process holds it
	Command string // the holder's command name; "" when unknown
	// Host is the host it is held on (unilock_holder_host): ETCD, the host its key
	// names ("" for a key of `etcdctl lock`); DOTLOCK, the lock file's host=; the
	// kernel's locks, this host. "" when unknown.
	Host string
}

// holderFromC is the record *c, with its host asked of the library through h (with
// l.mu held for reading).
func holderFromC(h *C.unilock, c *C.unilock_holder) Holder {
	return Holder{
		Backend: Backend(c.backend),
		Mode:    Mode(c.mode),
		Start:   uint64(c.start),
		Len:     uint64(c.len),
		Pid:     int(c.pid),
		Self:    c.self != 0,
		Command: C.GoString(&c.command[0]),
		Host:    holderHost(h, c),
	}
}

// holderHost is unilock_holder_host's answer; "" when the lock is gone meanwhile.
func holderHost(h *C.unilock, c *C.unilock_holder) string {
	buf := make([]byte, 256)
	for {
		n := C.unilock_holder_host(h, c, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
		if n < 0 {
			return ""
		}
		if int(n) < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, int(n)+1)
	}
}

// Query tells whether mode on the whole file could be taken now, taking nothing:
// nil when it could, else one conflicting lock. ETCD: nil when nobody holds the lock
// or this handle does, else the holder.
func (l *Lock) Query(mode Mode) (*Holder, error) { return l.QueryRange(mode, 0, 0) }

// QueryRange is Query for length bytes from start.
func (l *Lock) QueryRange(mode Mode, start, length uint64) (*Holder, error) {
	h, err := l.use("query")
	if err != nil {
		return nil, err
	}
	defer l.mu.RUnlock()
	var who C.unilock_holder
	rc := C.unilock_query(h, C.unilock_mode(mode), C.uint64_t(start), C.uint64_t(length), &who)
	if rc < 0 {
		return nil, pathError("query", l.path, rc)
	}
	if rc == 0 {
		return nil, nil
	}
	holder := holderFromC(h, &who)
	return &holder, nil
}

// List returns every lock on the file, from any process and any mechanism (like
// lslocks for one file). ETCD: the lock's queue, the holder first, then the waiters
// in the order they will be served.
func (l *Lock) List() ([]Holder, error) {
	h, err := l.use("list")
	if err != nil {
		return nil, err
	}
	defer l.mu.RUnlock()
	buf := make([]C.unilock_holder, 8)
	for {
		var count C.size_t
		rc := C.unilock_list(h, &buf[0], C.size_t(len(buf)), &count)
		if rc < 0 {
			return nil, pathError("list", l.path, rc)
		}
		if int(count) <= len(buf) {
			out := make([]Holder, int(count))
			for i := range out {
				out[i] = holderFromC(h, &buf[i])
			}
			return out, nil
		}
		buf = make([]C.unilock_holder, int(count)+8)
	}
}

// Touch refreshes a DOTLOCK lock file's time; for the kernel backends it does nothing.
// ETCD: renews the lease now (the library also does so every third of its TTL); an
// error matching ErrLockLost when it was lost.
func (l *Lock) Touch() error {
	h, err := l.use("touch")
	if err != nil {
		return err
	}
	defer l.mu.RUnlock()
	return l.result("touch", C.unilock_touch(h))
}

// Fence returns the fencing token of the ETCD lock the handle holds: the create
// revision of its key, which grows with every grant of the lock (by unilock,
// `etcdctl lock` or any clientv3 user). Send it with every write to a store that
// remembers the highest token it accepted and refuses lower ones: a holder that lost
// its lease without knowing it (paused past its TTL) can then do no damage. An error
// matching ErrLockLost when the handle holds no lock or has lost it;
// syscall.EOPNOTSUPP for the file backends.
func (l *Lock) Fence() (uint64, error) {
	h, err := l.use("fence")
	if err != nil {
		return 0, err
	}
	defer l.mu.RUnlock()
	var token C.uint64_t
	if rc := C.unilock_fence(h, &token); rc < 0 {
		return 0, pathError("fence", l.path, rc)
	}
	return uint64(token), nil
}

// Fd is the descriptor the handle locks through. It belongs to the handle: do not
// close it (closing any descriptor of a file drops the process's POSIX locks on it).
// -1 after Close.
func (l *Lock) Fd() int {
	h, err := l.use("fd")
	if err != nil {
		return -1
	}
	defer l.mu.RUnlock()
	return int(C.unilock_fd(h))
}

// Close releases what the handle holds and frees it; a Lock call waiting on it is
// cancelled first. Closing twice returns nil. Close is the contract; a finalizer only
// backs it up.
func (l *Lock) Close() error {
	for !l.mu.TryLock() {
		if h := l.h.Load(); h != nil {
			C.unilock_cancel(h)
		}
		time.Sleep(100 * time.Microsecond)
	}
	defer l.mu.Unlock()
	h := l.h.Swap(nil)
	if h == nil {
		return nil
	}
	runtime.SetFinalizer(l, nil)
	if rc := C.unilock_close(h); rc < 0 {
		return pathError("close", l.path, rc)
	}
	return nil
}
