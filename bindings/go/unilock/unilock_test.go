//go:build linux && cgo

package unilock_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/unilock/unilock/bindings/go/unilock"
)

func open(t *testing.T, path string, opts ...unilock.Option) *unilock.Lock {
	t.Helper()
	l, err := unilock.Open(path, append([]unilock.Option{unilock.WithCreate(0o600)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func TestVersionMatchesTheHeader(t *testing.T) {
	v := unilock.Version()
	if !strings.HasPrefix(v, "0.") || unilock.HeaderVersionMajor != 0 {
		t.Fatalf("library %s, header major %d", v, unilock.HeaderVersionMajor)
	}
}

func TestTryLockWouldBlockIsAPathErrorWithEAGAIN(t *testing.T) {
	path := lockPath(t)
	a, b := open(t, path), open(t, path)
	if err := a.TryLock(unilock.Exclusive); err != nil {
		t.Fatal(err)
	}
	err := b.TryLock(unilock.Exclusive)
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Op != "lock" || pe.Path != path {
		t.Fatalf("not a PathError on %s: %#v", path, err)
	}
	if pe.Err != syscall.EAGAIN {
		t.Fatalf("Err %#v", pe.Err)
	}
	for _, target := range []error{unilock.ErrWouldBlock, syscall.EAGAIN, syscall.EWOULDBLOCK} {
		if !errors.Is(err, target) {
			t.Errorf("errors.Is(%v, %v) is false", err, target)
		}
	}
	if errors.Is(err, unilock.ErrTimeout) || errors.Is(err, unilock.ErrCanceled) {
		t.Error("EAGAIN matches timeout or canceled")
	}
}

func TestOpenErrorsMatchFsSentinels(t *testing.T) {
	path := lockPath(t)
	_, err := unilock.Open(path)
	if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("missing file: %v", err)
	}
	l := open(t, path)
	err = l.LockRange(context.Background(), unilock.Exclusive, 0, 10)
	if !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Fatalf("range on FLOCK: %v", err)
	}
	if _, err := unilock.Open(path, unilock.WithBackend(unilock.BackendOFD|unilock.BackendPOSIX)); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("OFD+POSIX: %v", err)
	}
}

func TestAPathWithANulByteIsRefusedBeforeCSeesIt(t *testing.T) {
	dir := t.TempDir()
	_, err := unilock.Open(dir+"/a\x00b", unilock.WithCreate(0o600))
	var pe *fs.PathError
	if !errors.As(err, &pe) || !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Open with a NUL: %v, want a *fs.PathError with EINVAL", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("Open with a NUL made %v", left)
	}
}

func TestClosedHandleSaysErrClosed(t *testing.T) {
	l := open(t, lockPath(t))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := l.TryLock(unilock.Exclusive); !errors.Is(err, fs.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if l.Fd() != -1 || l.Cancel() {
		t.Fatal("Fd or Cancel after Close")
	}
}

func TestLockWithDeadlineReturnsDeadlineExceeded(t *testing.T) {
	path := lockPath(t)
	startPeer(t, "lock", path)
	l := open(t, path)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	err := l.Lock(ctx, unilock.Exclusive)
	elapsed := time.Since(began)
	if err != context.DeadlineExceeded || !errors.Is(err, unilock.ErrTimeout) || !os.IsTimeout(err) {
		t.Fatalf("err %v", err)
	}
	if elapsed < 190*time.Millisecond || elapsed > time.Second {
		t.Fatalf("took %v", elapsed)
	}
	assertHoldsNothing(t, l)
}

func TestLockCancelledByContext(t *testing.T) {
	path := lockPath(t)
	p := startPeer(t, "lock", path)
	l := open(t, path)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	began := time.Now()
	err := l.Lock(ctx, unilock.Exclusive)
	if err != context.Canceled {
		t.Fatalf("err %v", err)
	}
	if d := time.Since(began); d > time.Second {
		t.Fatalf("took %v", d)
	}
	assertHoldsNothing(t, l)
	// No stale cancel: the next wait on the handle waits and succeeds.
	time.AfterFunc(100*time.Millisecond, p.release)
	if err := l.Lock(context.Background(), unilock.Exclusive); err != nil {
		t.Fatal(err)
	}
}

func TestContextAlreadyDoneTakesNothing(t *testing.T) {
	l := open(t, lockPath(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Lock(ctx, unilock.Exclusive); err != context.Canceled {
		t.Fatalf("err %v", err)
	}
	assertHoldsNothing(t, l)
}

func TestHandOffAcrossProcesses(t *testing.T) {
	path := lockPath(t)
	p := startPeer(t, "lock", path)
	l := open(t, path)
	got := make(chan time.Time, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := l.Lock(ctx, unilock.Exclusive); err != nil {
			t.Error(err)
		}
		got <- time.Now()
	}()
	time.Sleep(100 * time.Millisecond)
	released := time.Now()
	p.release()
	if d := (<-got).Sub(released); d > 200*time.Millisecond {
		t.Fatalf("hand-off took %v", d)
	}
}

func TestCancelMethodEndsTheWait(t *testing.T) {
	path := lockPath(t)
	startPeer(t, "lock", path)
	l := open(t, path)
	if l.Cancel() {
		t.Fatal("Cancel with no call in progress reported one")
	}
	errc := make(chan error, 1)
	go func() { errc <- l.Lock(context.Background(), unilock.Exclusive) }()
	for deadline := time.Now().Add(5 * time.Second); !l.Cancel(); {
		if time.Now().After(deadline) {
			t.Fatal("Cancel never found the call")
		}
		time.Sleep(time.Millisecond)
	}
	err := <-errc
	if !errors.Is(err, unilock.ErrCanceled) || !errors.Is(err, syscall.ECANCELED) {
		t.Fatalf("err %v", err)
	}
}

func TestCloseCancelsAWait(t *testing.T) {
	path := lockPath(t)
	startPeer(t, "lock", path)
	l := open(t, path)
	errc := make(chan error, 1)
	go func() { errc <- l.Lock(context.Background(), unilock.Exclusive) }()
	time.Sleep(100 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, unilock.ErrCanceled) {
		t.Fatalf("err %v", err)
	}
}

// Deadlines from 0 to 2 ms against a held lock: every call ends with
// DeadlineExceeded (none hangs on a lost cancel), and no cancel lands on the next call.
func TestShortDeadlinesNeverHangOrLeakACancel(t *testing.T) {
	path := lockPath(t)
	p := startPeer(t, "lock", path)
	l := open(t, path)
	for i := 0; i < 300; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%20)*100*time.Microsecond)
		err := l.Lock(ctx, unilock.Exclusive)
		cancel()
		if err != context.DeadlineExceeded {
			t.Fatalf("round %d: %v", i, err)
		}
	}
	for i := 0; i < 100; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		go cancel()
		err := l.Lock(ctx, unilock.Exclusive)
		if err != context.Canceled {
			t.Fatalf("cancel round %d: %v", i, err)
		}
	}
	p.release()
	if err := l.TryLock(unilock.Exclusive); err != nil {
		t.Fatalf("after the cancels: %v", err)
	}
}

// Goroutines move between OS threads, and the library attributes locks to threads:
// many goroutines with their own handles on one file must exclude each other without
// a false EDEADLK. The race detector checks the exclusion (counter is guarded only by
// the file lock).
func TestGoroutinesExcludeEachOtherWithoutFalseDeadlocks(t *testing.T) {
	path := lockPath(t)
	var counter int
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := unilock.Open(path, unilock.WithCreate(0o600))
			if err != nil {
				t.Error(err)
				return
			}
			defer l.Close()
			for i := 0; i < 50; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err := l.Lock(ctx, unilock.Exclusive)
				cancel()
				if err != nil {
					t.Error(err)
					return
				}
				counter++
				runtime.Gosched()
				if err := l.Unlock(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if counter != 400 {
		t.Fatalf("counter %d", counter)
	}
}

func TestSharedLocksAndConversion(t *testing.T) {
	path := lockPath(t)
	a, b := open(t, path), open(t, path)
	ctx := context.Background()
	if err := a.Lock(ctx, unilock.Shared); err != nil {
		t.Fatal(err)
	}
	if err := b.TryLock(unilock.Shared); err != nil {
		t.Fatal(err)
	}
	if err := a.TryLock(unilock.Exclusive); !errors.Is(err, unilock.ErrWouldBlock) {
		t.Fatalf("upgrade with another reader: %v", err)
	}
	if h, err := a.Query(unilock.Shared); err != nil || h != nil {
		t.Fatalf("a kept its shared lock? %v %v", h, err)
	}
	_ = b.Unlock()
	if err := a.TryLock(unilock.Exclusive); err != nil {
		t.Fatalf("upgrade alone: %v", err)
	}
}

func TestRangesWithOFDAndPOSIX(t *testing.T) {
	for _, backend := range []unilock.Backend{unilock.BackendOFD, unilock.BackendPOSIX} {
		t.Run(backend.String(), func(t *testing.T) {
			path := lockPath(t)
			a, b := open(t, path, unilock.WithBackend(backend)), open(t, path, unilock.WithBackend(backend))
			ctx := context.Background()
			if err := a.LockRange(ctx, unilock.Exclusive, 0, 10); err != nil {
				t.Fatal(err)
			}
			if err := b.LockRange(ctx, unilock.Exclusive, 10, 10); err != nil {
				t.Fatal(err)
			}
			if err := b.TryLockRange(unilock.Shared, 5, 1); !errors.Is(err, unilock.ErrWouldBlock) {
				t.Fatalf("overlap: %v", err)
			}
			h, err := b.QueryRange(unilock.Shared, 5, 1)
			if err != nil || h == nil || h.Start != 0 || h.Len != 10 || h.Backend != backend || !h.Self || h.Pid != os.Getpid() {
				t.Fatalf("query: %+v %v", h, err)
			}
			if err := a.UnlockRange(0, 6); err != nil {
				t.Fatal(err)
			}
			if err := b.TryLockRange(unilock.Shared, 5, 1); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestQueryAndListNameAnotherProcess(t *testing.T) {
	path := lockPath(t)
	p := startPeer(t, "ofd", path)
	l := open(t, path, unilock.WithBackend(unilock.BackendOFD))
	h, err := l.Query(unilock.Shared)
	if err != nil || h == nil {
		t.Fatalf("query: %v %v", h, err)
	}
	if h.Pid != p.cmd.Process.Pid || h.Self || h.Mode != unilock.Exclusive || h.Backend != unilock.BackendOFD {
		t.Fatalf("holder %+v, peer pid %d", h, p.cmd.Process.Pid)
	}
	list, err := l.List()
	if err != nil || len(list) != 1 || list[0].Pid != p.cmd.Process.Pid {
		t.Fatalf("list %+v %v", list, err)
	}
}

func TestFdAndOpenFile(t *testing.T) {
	path := lockPath(t)
	fh, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	l, err := unilock.OpenFile(fh)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var a, b syscall.Stat_t
	if err := syscall.Fstat(l.Fd(), &a); err != nil {
		t.Fatal(err)
	}
	_ = syscall.Fstat(int(fh.Fd()), &b)
	if a.Ino != b.Ino || l.Fd() == int(fh.Fd()) {
		t.Fatal("Fd is not a duplicate of the file's descriptor")
	}
	if err := l.TryLock(unilock.Exclusive); err != nil {
		t.Fatal(err)
	}
	if err := l.Touch(); err != nil {
		t.Fatal(err)
	}
}

func assertHoldsNothing(t *testing.T, l *unilock.Lock) {
	t.Helper()
	list, err := l.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range list {
		if h.Self {
			t.Fatalf("this process holds %+v", h)
		}
	}
}

// A lock taken by an OS thread that has exited since stays attributed to it, and the
// library identifies threads by pthread_self, which new threads reuse: a wait from a
// new thread must still be an ordinary wait (it ends at the deadline), never EDEADLK.
func TestALockLeftByAnExitedThreadIsAnOrdinaryWait(t *testing.T) {
	path := lockPath(t)
	holder := open(t, path)
	done := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		done <- holder.Lock(context.Background(), unilock.Exclusive)
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // a new M may reuse the exited thread's identity
			l, err := unilock.Open(path)
			if err != nil {
				t.Error(err)
				return
			}
			defer l.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			if err := l.Lock(ctx, unilock.Exclusive); err != context.DeadlineExceeded {
				t.Errorf("got %v, want the deadline", err)
			}
		}()
	}
	wg.Wait()
}

// The same with byte ranges, built so that the binding's first new thread gets a
// false EDEADLK: this thread holds bytes 0-9, and bytes 10-19 are attributed to an
// exited thread whose pthread_self the next new thread is likely to reuse. The wait
// for bytes 0-19 must still end at its deadline.
func TestNewThreadsThatReuseAnExitedThreadsIdentityStillWait(t *testing.T) {
	path := lockPath(t)
	ofd := unilock.WithBackend(unilock.BackendOFD)
	h1, h2, h4 := open(t, path, ofd), open(t, path, ofd), open(t, path, ofd)
	ctx := context.Background()
	result := make(chan error)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := h1.LockRange(ctx, unilock.Exclusive, 10, 10); err != nil {
			result <- err
			return
		}
		// This thread holds 10-19 through h1: the library says EDEADLK, the binding
		// waits on a new thread, which gets 10-19 once h1 lets go, then exits.
		unlocked := make(chan struct{})
		time.AfterFunc(50*time.Millisecond, func() { _ = h1.Unlock(); close(unlocked) })
		if err := h2.LockRange(ctx, unilock.Exclusive, 10, 10); err != nil {
			result <- err
			return
		}
		// h2 may get the lock while h1's Unlock is still returning: h1 is used
		// again only once it has (a second call at once would be EBUSY).
		<-unlocked
		if err := h1.LockRange(ctx, unilock.Exclusive, 0, 10); err != nil {
			result <- err
			return
		}
		deadline, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		result <- h4.LockRange(deadline, unilock.Exclusive, 0, 20)
	}()
	if err := <-result; err != context.DeadlineExceeded {
		t.Fatalf("got %v, want the deadline", err)
	}
}

func TestBackendNamesAreSpelledAsTheCommandSpellsThem(t *testing.T) {
	want := map[unilock.Backend]string{
		unilock.BackendDefault: "FLOCK", unilock.BackendFlock: "FLOCK", unilock.BackendOFD: "OFD",
		unilock.BackendPOSIX: "POSIX", unilock.BackendDotlock: "DOTLOCK",
	}
	for b, name := range want {
		if got := b.String(); got != name {
			t.Errorf("Backend(%d).String() = %q, want %q", uint32(b), got, name)
		}
	}
}
