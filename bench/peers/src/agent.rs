//! The agent side: a process that holds one lock implementation and obeys the
//! driver, and the contender of the fairness runs.
//!
//! The agent protocol, one line each way (also spoken by `agent.py` and
//! `lockfile_agent.c`):
//!
//! | driver says | agent answers |
//! |---|---|
//! | (start) | `ready`, or `unsupported MESSAGE` and exits |
//! | `pair N` | the ns per pair of N uncontended try + release pairs |
//! | `wait MS` | `waiting` just before the lock call (MS < 0: no timeout), then `got T` (T: CLOCK_MONOTONIC ns when the call returned, the lock held), `timeout E` (E: ns the call took) or `error MESSAGE` |
//! | `release` | `ok` once released |
//! | `cpu` | user + system CPU ns of the agent and its reaped children |
//!
//! End of input ends the agent.

use std::io::{BufRead, Write};
use std::path::Path;

use crate::lockers::{self, Locker};
use crate::stats::{cpu_ns, mono_ns};

/// `agent KIND PATH`.
pub fn agent_main(kind: &str, path: &Path) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let mut out = std::io::stdout().lock();
    let mut locker = match lockers::make(kind, path) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(out, "unsupported {}", e.replace('\n', " "));
            return;
        }
    };
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("read a command");
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or("");
        let arg: i64 = words.next().map_or(0, |w| w.parse().expect("a number"));
        match command {
            "pair" => {
                let reply = pairs(locker.as_mut(), arg as usize);
                writeln!(out, "{reply}").unwrap();
            }
            "wait" => {
                writeln!(out, "waiting").unwrap();
                out.flush().unwrap();
                let t0 = mono_ns();
                let r = locker.lock(arg);
                let t1 = mono_ns();
                match r {
                    Ok(true) => writeln!(out, "got {t1}").unwrap(),
                    Ok(false) => writeln!(out, "timeout {}", t1 - t0).unwrap(),
                    Err(e) => writeln!(out, "error {}", e.replace('\n', " ")).unwrap(),
                }
            }
            "release" => {
                locker.unlock();
                writeln!(out, "ok").unwrap();
            }
            "cpu" => writeln!(out, "{}", cpu_ns()).unwrap(),
            other => panic!("agent: unknown command {other:?}"),
        }
        out.flush().unwrap();
    }
}

fn pairs(locker: &mut dyn Locker, n: usize) -> String {
    let t0 = mono_ns();
    for _ in 0..n {
        if !std::hint::black_box(locker.pair()) {
            return "error an uncontended pair failed".into();
        }
    }
    format!("{:.1}", (mono_ns() - t0) as f64 / n.max(1) as f64)
}

/// `contend KIND PATH START_NS DURATION_NS HOLD_NS`: from START (CLOCK_MONOTONIC)
/// for DURATION, takes the lock (waiting without timeout), holds it HOLD ns busy,
/// releases and starts again at once. Prints `COUNT MAX_WAIT_NS SUM_WAIT_NS
/// P99_WAIT_NS`, or `unsupported MESSAGE` when the locker cannot be had.
pub fn contend_main(kind: &str, path: &Path, start: u64, duration: u64, hold: u64) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let mut locker = match lockers::make(kind, path) {
        Ok(l) => l,
        Err(e) => {
            println!("unsupported {}", e.replace('\n', " "));
            return;
        }
    };
    let ts = libc::timespec {
        tv_sec: (start / 1_000_000_000) as libc::time_t,
        tv_nsec: (start % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: an absolute sleep on CLOCK_MONOTONIC with a valid timespec.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
    let end = start + duration;
    let mut waits: Vec<u64> = Vec::with_capacity(1 << 16);
    while mono_ns() < end {
        let t0 = mono_ns();
        match locker.lock(-1) {
            Ok(true) => {}
            Ok(false) => panic!("contend: an untimed wait returned without the lock"),
            Err(e) => {
                println!("error {e}");
                std::process::exit(1);
            }
        }
        let t1 = mono_ns();
        waits.push(t1 - t0);
        while mono_ns() < t1 + hold {
            std::hint::spin_loop();
        }
        locker.unlock();
    }
    let sum: u64 = waits.iter().sum();
    waits.sort_unstable();
    let p99 = match waits.len() {
        0 => 0,
        n => waits[(n * 99).div_ceil(100).clamp(1, n) - 1],
    };
    let max = waits.last().copied().unwrap_or(0);
    println!("{} {max} {sum} {p99}", waits.len());
}
