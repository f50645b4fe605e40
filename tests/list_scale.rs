//! Listing many locks: how long `Lock::list` and `unilock --list` take when one
//! process holds thousands of byte-range locks on the file. A measurement, not a
//! check: run it with `cargo test --release --test list_scale -- --ignored --nocapture`.

mod common;

use std::process::Command;
use std::time::Instant;

use common::{TempDir, opts};
use unilock::{Backend, Lock, Mode};

const UNILOCK: &str = env!("CARGO_BIN_EXE_unilock");

#[test]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
fn list_time_by_lock_count() {
    let dir = TempDir::new("list-scale");
    for backend in [Backend::Ofd, Backend::Posix] {
        for n in [5_000u64, 10_000, 20_000] {
            let path = dir.file(&format!("f-{backend:?}-{n}"));
            let lock = Lock::open(&path, &opts(backend)).unwrap();
            let began = Instant::now();
            for i in 0..n {
                lock.lock(Mode::Exclusive, 2 * i, 1, Some(std::time::Duration::ZERO))
                    .unwrap();
            }
            let took_locking = began.elapsed();
            let began = Instant::now();
            let listed = lock.list().unwrap();
            let in_process = began.elapsed();
            assert_eq!(listed.len() as u64, n);
            let began = Instant::now();
            let out = Command::new(UNILOCK)
                .args(["--list", "-b", common::name(backend)])
                .arg(&path)
                .output()
                .unwrap();
            let by_command = began.elapsed();
            assert!(out.status.success());
            let rows = String::from_utf8_lossy(&out.stdout).lines().count() - 1;
            assert_eq!(rows as u64, n);
            println!(
                "{backend:?} {n:>6} locks: Lock::list {:>8.3} s, unilock --list {:>8.3} s \
                 (locking took {:.3} s)",
                in_process.as_secs_f64(),
                by_command.as_secs_f64(),
                took_locking.as_secs_f64()
            );
        }
    }
}
