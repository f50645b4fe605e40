//go:build linux && cgo

package unilock_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/unilock/unilock/bindings/go/unilock"
)

// Flock, gofrs/flock-style raw flock(2), flock(1), the unilock command and a C program
// using libunilock all take the same flock(2) locks: each excludes the others.

func TestFlockAndRawFlockExcludeEachOther(t *testing.T) {
	path := lockPath(t)
	p := startPeer(t, "raw-flock", path)
	f := unilock.NewFlock(path)
	if ok, err := f.TryLock(); ok || err != nil {
		t.Fatalf("TryLock with a raw flock peer: %v %v", ok, err)
	}
	p.release()
	if ok, err := f.TryLock(); !ok || err != nil {
		t.Fatalf("TryLock after: %v %v", ok, err)
	}
	_ = f.Unlock()

	p = startPeer(t, "flock", path)
	fh, _ := os.Open(path)
	defer fh.Close()
	if err := rawTryFlock(fh); err == nil {
		t.Fatal("raw flock got the lock a Flock peer holds")
	}
	p.release()
	if err := rawTryFlock(fh); err != nil {
		t.Fatal(err)
	}
}

func TestFlockAndFlockCommandExcludeEachOther(t *testing.T) {
	flock, err := exec.LookPath("flock")
	if err != nil {
		t.Skip("no flock(1)")
	}
	testWithCommand(t, flock)
}

func TestFlockAndUnilockCommandExcludeEachOther(t *testing.T) {
	cmd := filepath.Join(repoRoot(t), "target", "release", "unilock")
	if _, err := os.Stat(cmd); err != nil {
		if cmd, err = exec.LookPath("unilock"); err != nil {
			t.Skip("no unilock command built")
		}
	}
	testWithCommand(t, cmd)
}

// testWithCommand: the flock(1)-compatible command holds, Flock fails; Flock holds,
// `command -n` fails with exit code 1.
func testWithCommand(t *testing.T, command string) {
	path := lockPath(t)
	p := startCommand(t, exec.Command(command, path, "-c", "echo locked; cat >/dev/null; echo released"))
	f := unilock.NewFlock(path)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if ok, err := f.TryLockContext(ctx, time.Millisecond); ok || err != context.DeadlineExceeded {
		t.Fatalf("TryLockContext while %s holds: %v %v", command, ok, err)
	}
	p.release()
	if ok, err := f.TryLock(); !ok || err != nil {
		t.Fatalf("after release: %v %v", ok, err)
	}
	err := exec.Command(command, "-n", path, "true").Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("%s -n while Flock holds: %v", command, err)
	}
	_ = f.Unlock()
	if err := exec.Command(command, "-n", path, "true").Run(); err != nil {
		t.Fatalf("%s -n after Unlock: %v", command, err)
	}
}

const cPeer = `#include <stdio.h>
#include <unilock.h>
/* cpeer PATH try: prints unilock_lock's result of one try; cpeer PATH hold: locks,
 * prints "locked", holds until stdin closes, prints "released". */
int main(int argc, char **argv) {
	unilock_options o;
	unilock *l;
	int rc;
	if (argc != 3) return 2;
	unilock_options_init(&o);
	o.flags = UNILOCK_CREATE;
	if ((rc = unilock_open(argv[1], &o, &l)) < 0) { fprintf(stderr, "%s\n", unilock_last_error()); return 2; }
	if (argv[2][0] == 't') { printf("%d\n", unilock_lock(l, UNILOCK_EXCLUSIVE, 0, 0, 0)); return 0; }
	if ((rc = unilock_lock(l, UNILOCK_EXCLUSIVE, 0, 0, -1)) < 0) return 2;
	printf("locked\n");
	fflush(stdout);
	while (getchar() != EOF) {}
	unilock_close(l);
	printf("released\n");
	return 0;
}
`

func TestFlockAndACProgramExcludeEachOther(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler")
	}
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "cpeer.c"), filepath.Join(dir, "cpeer")
	if err := os.WriteFile(src, []byte(cPeer), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-std=c99", "-Wall", "-Werror", "-o", bin, src}, cFlags(t)...)
	if out, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	path := lockPath(t)
	p := startCommand(t, exec.Command(bin, path, "hold"))
	f := unilock.NewFlock(path)
	if ok, err := f.TryLock(); ok || err != nil {
		t.Fatalf("TryLock while C holds: %v %v", ok, err)
	}
	p.release()
	if ok, err := f.TryLock(); !ok || err != nil {
		t.Fatalf("after release: %v %v", ok, err)
	}
	out, err := exec.Command(bin, path, "try").Output()
	if err != nil || strings.TrimSpace(string(out)) != "-11" {
		t.Fatalf("C try while Flock holds: %q %v", out, err)
	}
	_ = f.Unlock()
	if out, _ := exec.Command(bin, path, "try").Output(); strings.TrimSpace(string(out)) != "0" {
		t.Fatalf("C try after Unlock: %q", out)
	}
}

func rawTryFlock(fh *os.File) error {
	return syscall.Flock(int(fh.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
}
