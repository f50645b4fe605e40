//go:build linux && cgo

package unilock_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/unilock/unilock/bindings/go/unilock"
)

// The cross-process tests run this test binary again as a peer process: with
// UNILOCK_GO_PEER=KIND and UNILOCK_GO_PEER_PATH=PATH set, TestMain takes an exclusive
// lock on PATH with KIND, prints "locked", holds it until stdin closes, releases it,
// prints "released" and exits. KIND etcd: PATH is a lock name in the etcd cluster at
// UNILOCK_GO_PEER_ENDPOINTS.
func TestMain(m *testing.M) {
	if kind := os.Getenv("UNILOCK_GO_PEER"); kind != "" {
		os.Exit(runPeer(kind, os.Getenv("UNILOCK_GO_PEER_PATH")))
	}
	os.Exit(m.Run())
}

func runPeer(kind, path string) int {
	var unlock func() error
	switch kind {
	case "flock": // this package's gofrs-compatible Flock
		f := unilock.NewFlock(path)
		if err := f.Lock(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		unlock = f.Unlock
	case "raw-flock": // what gofrs/flock does: flock(2) on an os.File
		fh, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o600)
		if err == nil {
			err = syscall.Flock(int(fh.Fd()), syscall.LOCK_EX)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		unlock = fh.Close
	case "lock", "ofd", "etcd":
		opts := []unilock.Option{unilock.WithCreate(0o600), unilock.WithBackend(unilock.BackendFlock)}
		switch kind {
		case "ofd":
			opts = []unilock.Option{unilock.WithCreate(0o600), unilock.WithBackend(unilock.BackendOFD)}
		case "etcd":
			opts = []unilock.Option{unilock.WithBackend(unilock.BackendEtcd),
				unilock.WithEndpoints(os.Getenv("UNILOCK_GO_PEER_ENDPOINTS"))}
		}
		l, err := unilock.Open(path, opts...)
		if err == nil {
			err = l.Lock(context.Background(), unilock.Exclusive)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		unlock = l.Close
	default:
		fmt.Fprintln(os.Stderr, "unknown peer kind", kind)
		return 2
	}
	fmt.Println("locked")
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := unlock(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("released")
	return 0
}

// peer is another process holding a lock.
type peer struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	done  chan struct{} // closed when the process has exited
	wait  sync.Once     // starts cmd.Wait, once all reads of stdout are done
}

func (p *peer) waitExit() {
	p.wait.Do(func() { go func() { _ = p.cmd.Wait(); close(p.done) }() })
	<-p.done
}

func startCommand(t *testing.T, cmd *exec.Cmd) *peer {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &peer{t: t, cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout), done: make(chan struct{})}
	t.Cleanup(func() {
		_ = p.stdin.Close()
		timer := time.AfterFunc(5*time.Second, func() { _ = p.cmd.Process.Kill() })
		p.waitExit()
		timer.Stop()
	})
	if line, _ := p.out.ReadString('\n'); line != "locked\n" {
		t.Fatalf("%v: said %q, not locked", cmd.Args, line)
	}
	return p
}

// startPeer starts this test binary as a peer of the given kind holding path.
func startPeer(t *testing.T, kind, path string) *peer {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "UNILOCK_GO_PEER="+kind, "UNILOCK_GO_PEER_PATH="+path)
	return startCommand(t, cmd)
}

// release makes the peer release its lock and exit, and waits until it has.
func (p *peer) release() {
	p.t.Helper()
	_ = p.stdin.Close()
	if line, _ := p.out.ReadString('\n'); line != "released\n" {
		p.t.Fatalf("peer said %q, not released", line)
	}
	p.waitExit()
}

func lockPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "test.lock")
}

// repoRoot is the source tree's root (this package is bindings/go/unilock).
func repoRoot(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Clean(filepath.Join(wd, "..", "..", ".."))
}

// cFlags are the compiler flags for a C program using the library this binary uses.
func cFlags(t *testing.T) []string {
	if builtInTree {
		root := repoRoot(t)
		lib := filepath.Join(root, "target", "release")
		return []string{"-I" + filepath.Join(root, "include"), "-L" + lib, "-Wl,-rpath," + lib, "-lunilock"}
	}
	out, err := exec.Command("pkg-config", "--cflags", "--libs", "unilock").Output()
	if err != nil {
		t.Skip("pkg-config unilock:", err)
	}
	flags := strings.Fields(string(out))
	for _, f := range flags {
		if strings.HasPrefix(f, "-L") {
			flags = append(flags, "-Wl,-rpath,"+f[2:])
		}
	}
	return flags
}
