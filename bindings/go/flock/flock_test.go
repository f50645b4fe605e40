package flock_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/unilock/unilock/bindings/go/flock"
)

// With UNILOCK_FLOCK_PEER=PATH, this test binary is a peer: it takes an exclusive
// flock(2) lock on PATH with flock.New, prints "locked", holds it until stdin closes.
func TestMain(m *testing.M) {
	if path := os.Getenv("UNILOCK_FLOCK_PEER"); path != "" {
		f := flock.New(path)
		if err := f.Lock(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Println("locked")
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// holdInPeer holds path in another process; the returned func releases it (the peer
// exits) and returns when it has.
func holdInPeer(t *testing.T, path string) func() {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "UNILOCK_FLOCK_PEER="+path)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "locked\n" {
		t.Fatalf("peer said %q", line)
	}
	var once sync.Once
	release := func() {
		once.Do(func() {
			_ = stdin.Close()
			_ = cmd.Wait()
		})
	}
	t.Cleanup(release)
	return release
}

func newPath(t *testing.T) string { return filepath.Join(t.TempDir(), "flock.lock") }

func TestAcrossProcesses(t *testing.T) {
	path := newPath(t)
	release := holdInPeer(t, path)
	f := flock.New(path)
	if ok, err := f.TryLock(); ok || err != nil {
		t.Fatalf("TryLock: %v %v", ok, err)
	}
	if ok, err := f.TryRLock(); ok || err != nil {
		t.Fatalf("TryRLock: %v %v", ok, err)
	}
	if f.Locked() || f.RLocked() {
		t.Fatal("state after failed tries")
	}
	release()
	if ok, err := f.TryRLock(); !ok || err != nil {
		t.Fatalf("TryRLock after: %v %v", ok, err)
	}
	if !f.RLocked() || f.Locked() {
		t.Fatal("state")
	}
	if err := f.Close(); err != nil || f.RLocked() {
		t.Fatalf("Close: %v", err)
	}
}

// gofrs/flock retries every retryDelay; this waits in the kernel: with a retryDelay of
// an hour, the lock still comes as soon as the peer releases it.
func TestTryLockContextDoesNotPoll(t *testing.T) {
	path := newPath(t)
	release := holdInPeer(t, path)
	f := flock.New(path)
	releasedAt := make(chan time.Time, 1)
	time.AfterFunc(200*time.Millisecond, func() { releasedAt <- time.Now(); release() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ok, err := f.TryLockContext(ctx, time.Hour)
	if !ok || err != nil {
		t.Fatalf("%v %v", ok, err)
	}
	if d := time.Since(<-releasedAt); d > 150*time.Millisecond {
		t.Fatalf("took %v after the release", d)
	}
	_ = f.Unlock()
}

func TestTryRLockContextDeadline(t *testing.T) {
	path := newPath(t)
	holdInPeer(t, path)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	began := time.Now()
	ok, err := flock.New(path).TryRLockContext(ctx, time.Hour)
	if ok || err != context.DeadlineExceeded {
		t.Fatalf("%v %v", ok, err)
	}
	if d := time.Since(began); d > time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestLockedDoesNotWaitForALockInProgress(t *testing.T) {
	path := newPath(t)
	release := holdInPeer(t, path)
	f := flock.New(path)
	done := make(chan error)
	go func() { done <- f.Lock() }()
	time.Sleep(50 * time.Millisecond)
	finished := make(chan bool)
	go func() { finished <- f.Locked() }()
	select {
	case locked := <-finished:
		if locked {
			t.Fatal("Locked during the wait")
		}
	case <-time.After(time.Second):
		t.Fatal("Locked blocked")
	}
	release()
	if err := <-done; err != nil || !f.Locked() {
		t.Fatalf("Lock: %v", err)
	}
	_ = f.Unlock()
}

func TestReadersShareWritersExclude(t *testing.T) {
	path := newPath(t)
	a, b, c := flock.New(path), flock.New(path), flock.New(path)
	if err := a.RLock(); err != nil {
		t.Fatal(err)
	}
	if err := b.RLock(); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.TryLock(); ok {
		t.Fatal("writer with readers")
	}
	_ = b.Unlock()
	// Upgrade: a is the only reader now.
	if ok, err := a.TryLock(); !ok || err != nil {
		t.Fatalf("upgrade: %v %v", ok, err)
	}
	if !a.Locked() || !a.RLocked() {
		t.Fatal("gofrs/flock keeps both flags after an upgrade")
	}
	if ok, _ := c.TryRLock(); ok {
		t.Fatal("reader with a writer")
	}
	_ = a.Unlock()
	if a.Locked() || a.RLocked() {
		t.Fatal("flags after Unlock")
	}
}

func TestReadOnlyFileAndDirectory(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ro")
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, dir} {
		f := flock.New(p) // default flags: O_CREATE|O_RDONLY
		if ok, err := f.TryLock(); !ok || err != nil {
			t.Fatalf("%s: %v %v", p, ok, err)
		}
		if ok, _ := flock.New(p, flock.SetFlag(os.O_RDONLY)).TryLock(); ok {
			t.Fatalf("%s: second Flock got it", p)
		}
		_ = f.Unlock()
	}
}

func TestPermissionsAndFlags(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := newPath(t)
	f := flock.New(path, flock.SetPermissions(0o640))
	if ok, err := f.TryLock(); !ok || err != nil {
		t.Fatal(ok, err)
	}
	_ = f.Unlock()
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("perm %v %v", st.Mode(), err)
	}
	// Without O_CREATE a missing file is an error, as with os.OpenFile.
	missing := flock.New(path+".missing", flock.SetFlag(os.O_RDONLY))
	if _, err := missing.TryLock(); !os.IsNotExist(err) {
		t.Fatalf("missing: %v", err)
	}
	// O_TRUNC (not a flag unilock knows) is honoured by opening as gofrs/flock does.
	if err := os.WriteFile(path, []byte("data"), 0o640); err != nil {
		t.Fatal(err)
	}
	g := flock.New(path, flock.SetFlag(os.O_CREATE|os.O_RDWR|os.O_TRUNC))
	if ok, err := g.TryLock(); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if ok, _ := flock.New(path).TryLock(); ok {
		t.Fatal("a second Flock got the O_TRUNC Flock's lock")
	}
	if st, _ := g.Stat(); st.Size() != 0 {
		t.Fatalf("size %d", st.Size())
	}
	_ = g.Close()
}

func TestStatPathString(t *testing.T) {
	path := newPath(t)
	f := flock.NewFlock(path)
	if f.Path() != path || f.String() != path {
		t.Fatal("Path/String")
	}
	if _, err := f.Stat(); !os.IsNotExist(err) {
		t.Fatalf("Stat before: %v", err)
	}
	if err := f.Lock(); err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil || st.Name() != filepath.Base(path) || st.IsDir() {
		t.Fatalf("Stat: %v %v", st, err)
	}
	_ = f.Unlock()
}
