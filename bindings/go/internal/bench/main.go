// Command bench measures the Go binding for bindings/bench.sh and prints markdown
// table rows: the TryLock/Unlock pair through the binding against raw syscall.Flock in
// the same run, and the hand-off latency of Lock(ctx) with a deadline (another process
// releases; the time from its release to Lock's return) against a raw blocking
// flock(2), which cannot have a deadline.
//
//	go run -tags unilock_intree ./internal/bench
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/unilock/unilock/bindings/go/unilock"
)

func main() {
	if path := os.Getenv("UNILOCK_BENCH_PEER"); path != "" {
		peer(path)
		return
	}
	dir, err := os.MkdirTemp("", "unilock-bench-")
	check(err)
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "bench.lock")
	check(os.WriteFile(path, nil, 0o600))

	pairs(path)
	handOff(path)
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func perOp(n int, f func()) time.Duration {
	f() // warm up
	began := time.Now()
	for i := 0; i < n; i++ {
		f()
	}
	return time.Since(began) / time.Duration(n)
}

// bestOf measures a and b interleaved, three times each, and keeps each one's best.
func bestOf(n int, a, b func()) (time.Duration, time.Duration) {
	bestA, bestB := time.Duration(1<<62), time.Duration(1<<62)
	for i := 0; i < 3; i++ {
		if d := perOp(n, a); d < bestA {
			bestA = d
		}
		if d := perOp(n, b); d < bestB {
			bestB = d
		}
	}
	return bestA, bestB
}

func pairs(path string) {
	const n = 100000
	l, err := unilock.Open(path)
	check(err)
	defer l.Close()
	fh, err := os.Open(path)
	check(err)
	defer fh.Close()
	fd := int(fh.Fd())
	binding, raw := bestOf(n, func() {
		check(l.TryLock(unilock.Exclusive))
		check(l.Unlock())
	}, func() {
		check(syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB))
		check(syscall.Flock(fd, syscall.LOCK_UN))
	})
	const m = 50000
	f := unilock.NewFlock(path)
	flock, rawOpen := bestOf(m, func() {
		ok, err := f.TryLock()
		check(err)
		if !ok {
			check(fmt.Errorf("not locked"))
		}
		check(f.Unlock())
	}, func() {
		fh, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o600)
		check(err)
		check(syscall.Flock(int(fh.Fd()), syscall.LOCK_EX|syscall.LOCK_NB))
		check(syscall.Flock(int(fh.Fd()), syscall.LOCK_UN))
		check(fh.Close())
	})
	fmt.Printf("| Go | `(*Lock).TryLock` + `Unlock` pair (one handle) | %s | raw `syscall.Flock` LOCK_EX\\|LOCK_NB + LOCK_UN: %s |\n", us(binding), us(raw))
	fmt.Printf("| Go | `Flock.TryLock` + `Unlock` pair (opens and closes the file, as gofrs/flock) | %s | raw open + flock + flock + close (what gofrs/flock does): %s |\n", us(flock), us(rawOpen))
}

// peer holds path with a raw flock(2); on "release" it prints the time and unlocks;
// on "lock" it locks again and prints "locked".
func peer(path string) {
	fh, err := os.Open(path)
	check(err)
	fd := int(fh.Fd())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "lock":
			check(syscall.Flock(fd, syscall.LOCK_EX))
			fmt.Println("locked")
		case "release":
			t := time.Now().UnixNano()
			check(syscall.Flock(fd, syscall.LOCK_UN))
			fmt.Println(t)
		}
	}
}

func handOff(path string) {
	const rounds = 300
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "UNILOCK_BENCH_PEER="+path)
	stdin, err := cmd.StdinPipe()
	check(err)
	stdout, err := cmd.StdoutPipe()
	check(err)
	cmd.Stderr = os.Stderr
	check(cmd.Start())
	out := bufio.NewScanner(stdout)
	say := func(s string) string {
		fmt.Fprintln(stdin, s)
		if !out.Scan() {
			check(fmt.Errorf("peer: %v", out.Err()))
		}
		return out.Text()
	}
	measure := func(wait func(), release func()) []time.Duration {
		var lat []time.Duration
		for i := 0; i < rounds; i++ {
			say("lock")
			got := make(chan int64)
			go func() {
				wait()
				got <- time.Now().UnixNano()
			}()
			time.Sleep(2 * time.Millisecond) // the waiter is asleep in the kernel
			released, err := strconv.ParseInt(say("release"), 10, 64)
			check(err)
			lat = append(lat, time.Duration(<-got-released))
			release()
		}
		return lat
	}
	l, err := unilock.Open(path)
	check(err)
	binding := measure(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		check(l.Lock(ctx, unilock.Exclusive))
	}, func() { check(l.Unlock()) })
	fh, err := os.Open(path)
	check(err)
	raw := measure(func() {
		check(syscall.Flock(int(fh.Fd()), syscall.LOCK_EX))
	}, func() { check(syscall.Flock(int(fh.Fd()), syscall.LOCK_UN)) })
	_ = stdin.Close()
	_ = cmd.Wait()
	fmt.Printf("| Go | hand-off: another process releases, `Lock(ctx)` with a 10 s deadline returns (median / p90, %d rounds) | %s | raw blocking `syscall.Flock` (no deadline possible): %s |\n",
		rounds, dist(binding), dist(raw))
}

func us(d time.Duration) string { return fmt.Sprintf("%.2f µs", float64(d)/1e3) }

func dist(ds []time.Duration) string {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	med, p90 := ds[len(ds)/2], ds[len(ds)*9/10]
	return strings.Join([]string{us(med), us(p90)}, " / ")
}
