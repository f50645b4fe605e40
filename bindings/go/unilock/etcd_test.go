//go:build linux && cgo

package unilock_test

// The ETCD backend through the binding, against a real etcd that TestEtcd starts on
// free loopback ports in a temporary directory and stops at the end, also when a
// subtest fails. Debian: apt-get install etcd-server etcd-client. A missing etcd
// fails the test: it is not a reason to skip it.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/unilock/unilock/bindings/go/unilock"
)

// tool finds an etcd program, or fails the test.
func tool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range []string{"/usr/bin/" + name, "/usr/sbin/" + name} {
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatalf("%s is not installed: the ETCD tests need a real etcd (Debian: apt-get install etcd-server etcd-client)", name)
	return ""
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// etcdServer is one etcd member on loopback ports.
type etcdServer struct {
	url string
	log string
}

// startEtcd starts an etcd member for t, stopped (SIGTERM, then SIGKILL) by t's
// cleanup, before its temporary directory is removed.
func startEtcd(t *testing.T) *etcdServer {
	t.Helper()
	bin := tool(t, "etcd")
	dir := t.TempDir()
	s := &etcdServer{log: filepath.Join(dir, "etcd.log")}
	for attempt := 0; attempt < 3; attempt++ { // a port taken between the probe and etcd's bind
		client, peer := freePort(t), freePort(t)
		s.url = fmt.Sprintf("http://127.0.0.1:%d", client)
		peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
		logFile, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--name", "a", "--data-dir", filepath.Join(dir, fmt.Sprintf("data-%d", client)),
			"--listen-client-urls", s.url, "--advertise-client-urls", s.url,
			"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", "a="+peerURL,
			"--unsafe-no-fsync") // a test cluster: no fsync wait per write
		cmd.Stdout, cmd.Stderr = logFile, logFile
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			logFile.Close()
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
			logFile.Close()
		}
		if s.waitReady(exited, 30*time.Second) {
			t.Cleanup(stop)
			return s
		}
		stop()
	}
	t.Fatalf("etcd did not start; its log:\n%s", s.logTail())
	return nil
}

func (s *etcdServer) waitReady(exited <-chan struct{}, limit time.Duration) bool {
	client := &http.Client{Timeout: time.Second}
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		select {
		case <-exited:
			return false
		default:
		}
		resp, err := client.Post(s.url+"/v3/kv/range", "application/json", strings.NewReader(`{"key":"AA=="}`))
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
	}
	return false
}

func (s *etcdServer) logTail() string {
	b, err := os.ReadFile(s.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

func (s *etcdServer) etcdctl(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(tool(t, "etcdctl"), append([]string{"--endpoints", s.url}, args...)...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("etcdctl %v: %v: %s", args, err, ee.Stderr)
		}
		t.Fatalf("etcdctl %v: %v", args, err)
	}
	return string(out)
}

// holderLease is the lease id (hex) of the only key in name's queue.
func (s *etcdServer) holderLease(t *testing.T, name string) string {
	t.Helper()
	keys := strings.Fields(s.etcdctl(t, "get", "--prefix", name+"/", "--keys-only"))
	if len(keys) != 1 {
		t.Fatalf("the queue of %s: %q, not one key", name, keys)
	}
	return keys[0][strings.LastIndexByte(keys[0], '/')+1:]
}

// openEtcd opens an ETCD handle on name, closed at t's end.
func (s *etcdServer) open(t *testing.T, name string, opts ...unilock.Option) *unilock.Lock {
	t.Helper()
	base := []unilock.Option{unilock.WithBackend(unilock.BackendEtcd), unilock.WithEndpoints(s.url)}
	l, err := unilock.Open(name, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func lockWithin(t *testing.T, l *unilock.Lock, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := l.Lock(ctx, unilock.Exclusive); err != nil {
		t.Fatal(err)
	}
}

func fence(t *testing.T, l *unilock.Lock) uint64 {
	t.Helper()
	token, err := l.Fence()
	if err != nil {
		t.Fatal(err)
	}
	return token
}

func list(t *testing.T, l *unilock.Lock) []unilock.Holder {
	t.Helper()
	hs, err := l.List()
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

// waitQueue waits until name's queue, as l lists it, has n keys.
func waitQueue(t *testing.T, l *unilock.Lock, n int) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		hs := list(t, l)
		if len(hs) == n {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("the queue has %d keys, not %d: %+v", len(hs), n, hs)
		}
	}
}

// waitInBackground runs l.Lock(ctx) in a goroutine; its error arrives on the channel.
func waitInBackground(ctx context.Context, l *unilock.Lock) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- l.Lock(ctx, unilock.Exclusive) }()
	return ch
}

func TestEtcd(t *testing.T) {
	s := startEtcd(t)
	hostname, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	name := func(t *testing.T) string { return "unilock-go-test/" + t.Name() }

	t.Run("TwoProcessesExcludeEachOther", func(t *testing.T) {
		n := name(t)
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "UNILOCK_GO_PEER=etcd", "UNILOCK_GO_PEER_PATH="+n, "UNILOCK_GO_PEER_ENDPOINTS="+s.url)
		p := startCommand(t, cmd)
		mine := s.open(t, n)
		if err := mine.TryLock(unilock.Exclusive); !errors.Is(err, unilock.ErrWouldBlock) {
			t.Fatalf("TryLock while a peer holds: %v", err)
		}
		who, err := mine.Query(unilock.Exclusive)
		if err != nil || who == nil {
			t.Fatalf("Query: %+v, %v", who, err)
		}
		if who.Backend != unilock.BackendEtcd || who.Mode != unilock.Exclusive || who.Self ||
			who.Pid != cmd.Process.Pid || who.Host != hostname || who.Command == "" {
			t.Fatalf("Query: %+v (peer %d on %s)", who, cmd.Process.Pid, hostname)
		}
		// The peer releases while this process waits: the wait ends.
		time.AfterFunc(300*time.Millisecond, func() { _ = p.stdin.Close() })
		began := time.Now()
		lockWithin(t, mine, 10*time.Second)
		if d := time.Since(began); d < 250*time.Millisecond || d > 5*time.Second {
			t.Fatalf("the wait took %v", d)
		}
		p.release()
		// Now this process holds: a new peer waits until it releases.
		cmd = exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "UNILOCK_GO_PEER=etcd", "UNILOCK_GO_PEER_PATH="+n, "UNILOCK_GO_PEER_ENDPOINTS="+s.url)
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 2)
		go func() {
			r := bufio.NewReader(stdout)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					close(lines)
					return
				}
				lines <- line
			}
		}()
		t.Cleanup(func() {
			_ = stdin.Close()
			timer := time.AfterFunc(5*time.Second, func() { _ = cmd.Process.Kill() })
			_ = cmd.Wait()
			timer.Stop()
		})
		select {
		case line := <-lines:
			t.Fatalf("the peer said %q while this process held the lock", line)
		case <-time.After(time.Second):
		}
		waitQueue(t, mine, 2)
		if err := mine.Unlock(); err != nil {
			t.Fatal(err)
		}
		select {
		case line := <-lines:
			if line != "locked\n" {
				t.Fatalf("the peer said %q", line)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the peer did not get the lock after the release")
		}
		if err := mine.TryLock(unilock.Exclusive); !errors.Is(err, unilock.ErrWouldBlock) {
			t.Fatalf("TryLock while the second peer holds: %v", err)
		}
		_ = stdin.Close()
		if line := <-lines; line != "released\n" {
			t.Fatalf("the peer said %q", line)
		}
		if err := mine.TryLock(unilock.Exclusive); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("TwoHandlesOfOneProcessExcludeEachOther", func(t *testing.T) {
		a, b := s.open(t, name(t)), s.open(t, name(t))
		if err := a.TryLock(unilock.Exclusive); err != nil {
			t.Fatal(err)
		}
		if err := b.TryLock(unilock.Exclusive); !errors.Is(err, unilock.ErrWouldBlock) {
			t.Fatalf("b.TryLock: %v", err)
		}
		if err := a.Unlock(); err != nil {
			t.Fatal(err)
		}
		if err := b.TryLock(unilock.Exclusive); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("TimedLockTimesOutAndLeavesTheQueue", func(t *testing.T) {
		holder, waiter := s.open(t, name(t)), s.open(t, name(t))
		lockWithin(t, holder, 5*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		began := time.Now()
		err := waiter.Lock(ctx, unilock.Exclusive)
		d := time.Since(began)
		if err != context.DeadlineExceeded || !errors.Is(err, unilock.ErrTimeout) {
			t.Fatalf("Lock: %v", err)
		}
		if d < 490*time.Millisecond || d > 2*time.Second {
			t.Fatalf("the timed wait took %v", d)
		}
		if hs := list(t, holder); len(hs) != 1 || !hs[0].Self {
			t.Fatalf("the queue after the timeout: %+v", hs)
		}
	})

	t.Run("ContextCancelEndsTheWait", func(t *testing.T) {
		holder, waiter := s.open(t, name(t)), s.open(t, name(t))
		lockWithin(t, holder, 5*time.Second)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(300*time.Millisecond, cancel)
		began := time.Now()
		err := waiter.Lock(ctx, unilock.Exclusive)
		d := time.Since(began)
		if err != context.Canceled {
			t.Fatalf("Lock: %v", err)
		}
		if d < 250*time.Millisecond || d > 2*time.Second {
			t.Fatalf("the cancelled wait took %v", d)
		}
		if hs := list(t, holder); len(hs) != 1 {
			t.Fatalf("the queue after the cancel: %+v", hs)
		}
	})

	t.Run("CancelEndsTheWait", func(t *testing.T) {
		holder, waiter := s.open(t, name(t)), s.open(t, name(t))
		lockWithin(t, holder, 5*time.Second)
		done := waitInBackground(context.Background(), waiter)
		waitQueue(t, holder, 2)
		began := time.Now()
		if !waiter.Cancel() {
			t.Fatal("Cancel found no call in progress")
		}
		select {
		case err := <-done:
			if !errors.Is(err, unilock.ErrCanceled) {
				t.Fatalf("Lock: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Cancel did not end the wait")
		}
		if d := time.Since(began); d > 2*time.Second {
			t.Fatalf("the cancel took %v", d)
		}
		if hs := list(t, holder); len(hs) != 1 {
			t.Fatalf("the queue after the cancel: %+v", hs)
		}
	})

	t.Run("FenceTokensStrictlyIncreaseAcrossGrants", func(t *testing.T) {
		n := name(t)
		a, b := s.open(t, n), s.open(t, n)
		var tokens []uint64
		for _, l := range []*unilock.Lock{a, b, a, b, a} {
			lockWithin(t, l, 5*time.Second)
			token := fence(t, l)
			if hs := list(t, l); len(hs) != 1 || hs[0].Start != token {
				t.Fatalf("token %d, queue %+v", token, hs)
			}
			tokens = append(tokens, token)
			if err := l.Unlock(); err != nil {
				t.Fatal(err)
			}
		}
		// etcd's own lock is a grant too.
		s.etcdctl(t, "lock", n, "true")
		lockWithin(t, b, 5*time.Second)
		tokens = append(tokens, fence(t, b))
		for i := 1; i < len(tokens); i++ {
			if tokens[i] <= tokens[i-1] {
				t.Fatalf("tokens do not increase: %v", tokens)
			}
		}
		// No lock held: no token.
		if _, err := a.Fence(); !errors.Is(err, unilock.ErrLockLost) {
			t.Fatalf("Fence without a lock: %v", err)
		}
	})

	t.Run("ListShowsTheHolderThenAWaiterWithHost", func(t *testing.T) {
		holder, waiter := s.open(t, name(t)), s.open(t, name(t))
		lockWithin(t, holder, 5*time.Second)
		ctx, cancel := context.WithCancel(context.Background())
		done := waitInBackground(ctx, waiter)
		ended := false
		defer func() {
			cancel()
			if !ended {
				<-done
			}
		}()
		waitQueue(t, holder, 2)
		hs := list(t, holder)
		first, second := hs[0], hs[1]
		if first.Start != fence(t, holder) || !first.Self || first.Pid != os.Getpid() || first.Host != hostname ||
			first.Backend != unilock.BackendEtcd || first.Mode != unilock.Exclusive {
			t.Fatalf("the holder: %+v", first)
		}
		if second.Start <= first.Start || !second.Self || second.Pid != os.Getpid() || second.Host != hostname {
			t.Fatalf("the waiter: %+v", second)
		}
		if who, err := holder.Query(unilock.Exclusive); err != nil || who != nil {
			t.Fatalf("the holder's own Query: %+v, %v", who, err)
		}
		other := s.open(t, name(t))
		if who, err := other.Query(unilock.Exclusive); err != nil || who == nil || *who != first {
			t.Fatalf("another handle's Query: %+v, %v; the holder %+v", who, err, first)
		}
		if err := holder.Unlock(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			ended = true
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the waiter did not get the lock")
		}
		if hs := list(t, holder); len(hs) != 1 || hs[0].Start != second.Start || fence(t, waiter) != second.Start {
			t.Fatalf("after the release: %+v (the waiter was %+v)", hs, second)
		}
	})

	t.Run("EtcdctlLockKeyHasNoHost", func(t *testing.T) {
		n := name(t)
		cmd := exec.Command(tool(t, "etcdctl"), "--endpoints", s.url, "lock", n)
		cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}()
		if line, _ := bufio.NewReader(stdout).ReadString('\n'); !strings.HasPrefix(line, n+"/") {
			t.Fatalf("etcdctl lock said %q", line)
		}
		who, err := s.open(t, n).Query(unilock.Exclusive)
		if err != nil || who == nil || who.Host != "" || who.Pid != -1 || who.Self {
			t.Fatalf("Query: %+v, %v", who, err)
		}
	})

	t.Run("SharedLockIsEOPNOTSUPP", func(t *testing.T) {
		l := s.open(t, name(t))
		err := l.Lock(context.Background(), unilock.Shared)
		var pe *fs.PathError
		if !errors.Is(err, syscall.EOPNOTSUPP) || !errors.As(err, &pe) || pe.Path != name(t) {
			t.Fatalf("a shared lock: %v", err)
		}
	})

	t.Run("RevokedLeaseIsErrLockLost", func(t *testing.T) {
		n := name(t)
		l := s.open(t, n, unilock.WithLeaseTTL(2*time.Second))
		lockWithin(t, l, 5*time.Second)
		token := fence(t, l)
		s.etcdctl(t, "lease", "revoke", s.holderLease(t, n))
		// The library's keep-alive finds the lease gone within a third of its TTL;
		// then the next call fails.
		var lost error
		for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if got, err := l.Fence(); err != nil {
				lost = err
				break
			} else if got != token {
				t.Fatalf("the token changed: %d, then %d", token, got)
			}
		}
		if !errors.Is(lost, unilock.ErrLockLost) || !errors.Is(lost, syscall.ENOLCK) {
			t.Fatalf("after the revoke: %v", lost)
		}
		// The handle holds nothing now; another takes the lock with a higher token.
		other := s.open(t, n)
		lockWithin(t, other, 5*time.Second)
		if fence(t, other) <= token {
			t.Fatalf("the next grant's token %d is not above %d", fence(t, other), token)
		}
	})

	t.Run("TouchAfterARevokeIsErrLockLostAtOnce", func(t *testing.T) {
		n := name(t)
		l := s.open(t, n, unilock.WithLeaseTTL(30*time.Second))
		lockWithin(t, l, 5*time.Second)
		if err := l.Touch(); err != nil {
			t.Fatal(err)
		}
		s.etcdctl(t, "lease", "revoke", s.holderLease(t, n))
		if err := l.Touch(); !errors.Is(err, unilock.ErrLockLost) {
			t.Fatalf("Touch after the revoke: %v", err)
		}
		if _, err := l.Fence(); !errors.Is(err, unilock.ErrLockLost) {
			t.Fatalf("Fence after the revoke: %v", err)
		}
		lockWithin(t, l, 5*time.Second) // the handle can take it again
	})

	t.Run("PasswordIsNeverShown", func(t *testing.T) {
		const secret = "pa55-w0rd-never-shown"
		l := s.open(t, name(t), unilock.WithUser("someone"), unilock.WithPassword(secret))
		shown := fmt.Sprintf("%v %+v %#v", l, l, l)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// Authentication is not enabled on this cluster: etcd refuses the user.
		err := l.Lock(ctx, unilock.Exclusive)
		if !errors.Is(err, fs.ErrPermission) {
			t.Fatalf("Lock as a user on a cluster without authentication: %v", err)
		}
		shown += fmt.Sprintf("%v %+v %#v", err, err, err)
		if strings.Contains(shown, secret) {
			t.Fatalf("the password is shown: %s", shown)
		}
	})

	t.Run("UnreachableEndpointIsECONNREFUSED", func(t *testing.T) {
		l, err := unilock.Open(name(t), unilock.WithBackend(unilock.BackendEtcd),
			unilock.WithEndpoints(fmt.Sprintf("127.0.0.1:%d", freePort(t))))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := l.Lock(ctx, unilock.Exclusive); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("Lock: %v", err)
		}
	})
}

func TestEtcdOptionsNeedBackendEtcd(t *testing.T) {
	path := lockPath(t)
	_, err := unilock.Open(path, unilock.WithEndpoints("http://127.0.0.1:1"), unilock.WithLeaseTTL(time.Second))
	if !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "WithEndpoints, WithLeaseTTL need WithBackend(BackendEtcd)") {
		t.Fatalf("Open: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the file was made: %v", err)
	}
	_, err = unilock.Open("name", unilock.WithBackend(unilock.BackendEtcd), unilock.WithPassword("a\x00b"))
	if !errors.Is(err, syscall.EINVAL) || strings.Contains(err.Error(), "a\x00b") {
		t.Fatalf("Open with a NUL in the password: %v", err)
	}
}

func TestFenceOfAFileLockIsEOPNOTSUPP(t *testing.T) {
	l := open(t, lockPath(t))
	if err := l.TryLock(unilock.Exclusive); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Fence(); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Fatalf("Fence: %v", err)
	}
	hs, err := l.List()
	if err != nil || len(hs) != 1 {
		t.Fatalf("List: %+v, %v", hs, err)
	}
	if host, _ := os.Hostname(); hs[0].Host != host {
		t.Fatalf("a flock lock's host %q, not %q", hs[0].Host, host)
	}
}
