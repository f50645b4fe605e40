//! Who holds a lock, while the rest of the system locks and unlocks: FLOCK queries and
//! every list come from /proc/locks, which the kernel makes a piece per read() and in
//! which lines are skipped or repeated when the lock lists change between two pieces.
//! A lock held all along must never look free or vanish from the list because other
//! files are being locked meanwhile.

mod common;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Peer, TempDir, opts};
use unilock::{Backend, Lock, Mode};

#[test]
fn peer_main() {
    if std::env::var_os(common::PEER_ENV).is_some() {
        common::peer_loop();
    }
}

/// Threads that take and release flock locks on other files until dropped.
struct Churn {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Churn {
    fn start(dir: &TempDir, threads: usize, files: usize) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|t| {
                let stop = stop.clone();
                let files: Vec<std::fs::File> = (0..files)
                    .map(|i| std::fs::File::open(dir.file(&format!("churn-{t}-{i}"))).unwrap())
                    .collect();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for op in [libc::LOCK_EX, libc::LOCK_UN] {
                            for f in &files {
                                // SAFETY: flock on a descriptor this thread owns.
                                unsafe { libc::flock(f.as_raw_fd(), op) };
                            }
                        }
                    }
                })
            })
            .collect();
        Churn { stop, threads }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn query_and_list_see_a_held_lock_while_other_files_churn() {
    let dir = TempDir::new("churn");
    let mut failures = Vec::new();
    for b in [Backend::Flock, Backend::Ofd] {
        let path = dir.file(&format!("held-{b:?}"));
        let mut peer = Peer::spawn();
        let backend = if b == Backend::Flock { "flock" } else { "ofd" };
        assert_eq!(
            peer.cmd(&format!("open p {} {backend}", path.display())),
            "ok"
        );
        assert_eq!(peer.cmd("lock p ex 0 0 0"), "ok");
        let lock = Lock::open(&path, &opts(b)).unwrap();
        let churn = Churn::start(&dir, 2, 20);
        let until = Instant::now() + Duration::from_secs(2);
        let (mut calls, mut free, mut wrong_lists) = (0, 0, 0);
        let mut lengths = std::collections::BTreeSet::new();
        while calls < 2000 && Instant::now() < until {
            calls += 1;
            if lock.query(Mode::Shared, 0, 0).unwrap().is_none() {
                free += 1;
            }
            let listed = lock.list().unwrap().len();
            if listed != 1 {
                wrong_lists += 1;
                lengths.insert(listed);
            }
        }
        drop(churn);
        if free + wrong_lists > 0 {
            failures.push(format!(
                "{b:?}: of {calls} calls, {free} queries said free and {wrong_lists} lists \
                 did not show the one lock (they had {lengths:?} entries)"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
