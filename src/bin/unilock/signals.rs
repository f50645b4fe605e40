//! The signals that would end `unilock` while it has the lock: SIGHUP, SIGINT, SIGQUIT
//! and SIGTERM.
//!
//! flock(1) simply dies of them; its flock lock survives in the open file description
//! the command inherited. A POSIX lock or a DOTLOCK lock file is `unilock`'s own, so
//! its death would free the lock while the command still runs. The file form therefore
//! blocks these signals from the start and reads them from a `signalfd`, so that none
//! is lost whenever it comes:
//!
//! - while `unilock` waits for the lock, a watcher thread cancels the wait
//!   ([`Lock::cancel`]); `unilock` then releases whatever it took and dies of the
//!   signal, as flock(1) would have;
//! - between the lock and the command, the same: the command is not started;
//! - while the command runs, the signal is passed on to it, except a SIGINT or SIGQUIT
//!   the kernel sent (a terminal's, which the command, in the same foreground process
//!   group, got too), and `unilock` waits for the command. When the command dies of a
//!   signal, `unilock` releases the lock and then dies of the signal it got itself (a
//!   shell sees what flock(1) would give: 128+N, and a script stops at a ^C); when the
//!   command catches the signal and exits, its exit status is `unilock`'s.
//!
//! A signal that is ignored or blocked when `unilock` starts (SIGINT and SIGQUIT in a
//! background job of a script, SIGHUP under nohup) is left alone, as flock(1) leaves
//! it, and the command starts with the signal mask `unilock` started with.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use unilock::Lock;

use crate::sys;

/// The signals whose default action would end `unilock` with the lock.
const ENDING: [libc::c_int; 4] = [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM];

/// How often the watcher cancels the lock calls of an acquisition, once a signal came,
/// until the acquisition gives up (a cancel reaches only the call in progress).
const CANCEL_AGAIN: Duration = Duration::from_millis(1);

/// The signals `unilock` takes over for one run of the file form.
pub struct Signals {
    /// The signal mask `unilock` started with: the command's.
    original: sys::SigSet,
    /// Reads the signals taken over, and SIGCHLD once [`Signals::before_fork`] blocks it;
    /// `None` when no signal was taken over (all ignored or blocked, or no signalfd).
    fd: Option<sys::SignalFd>,
    /// The first signal received before the command started, or 0.
    caught: AtomicI32,
    /// True while the watcher thread may read the signalfd; held while a signal is
    /// read and recorded, so that once [`Signals::during`]'s `stop` has set it false,
    /// no signal read by the watcher can be missed by the main thread.
    watching: Mutex<bool>,
}

impl Signals {
    /// Blocks those of the ending signals that are neither ignored nor blocked, and
    /// opens the signalfd they are read from. Where a signalfd cannot be made, the
    /// signals are left as they were (flock(1)'s behaviour).
    pub fn take_over() -> Signals {
        let taken: Vec<libc::c_int> = ENDING.into_iter().filter(|&s| !sys::ignored(s)).collect();
        let original = sys::block(&sys::SigSet::of(&taken));
        let taken: Vec<libc::c_int> = taken
            .into_iter()
            .filter(|&s| !original.contains(s))
            .collect();
        let mut read = taken.clone();
        read.push(libc::SIGCHLD);
        let fd = if taken.is_empty() {
            None
        } else {
            sys::SignalFd::new(&sys::SigSet::of(&read)).ok()
        };
        if fd.is_none() {
            sys::set_mask(&original);
        }
        Signals {
            original,
            fd,
            caught: AtomicI32::new(0),
            watching: Mutex::new(true),
        }
    }

    /// The signal received before the command started, if any (one pending now
    /// included).
    pub fn caught(&self) -> Option<i32> {
        let _reading = self.watching.lock().unwrap_or_else(|p| p.into_inner());
        self.take_one()
    }

    /// Reads one pending signal (not SIGCHLD) into `caught`; returns `caught`. The
    /// caller holds `watching`.
    fn take_one(&self) -> Option<i32> {
        if let Some(fd) = &self.fd {
            while let Some(c) = fd.take() {
                if c.signal != libc::SIGCHLD {
                    let _ = self.caught.compare_exchange(
                        0,
                        c.signal,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                    break;
                }
            }
        }
        match self.caught.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }

    /// The watcher's read: as [`Signals::caught`], but nothing once watching has
    /// stopped (what comes later is the main thread's to read).
    fn caught_while_watching(&self) -> Option<i32> {
        let watching = self.watching.lock().unwrap_or_else(|p| p.into_inner());
        if !*watching {
            return None;
        }
        self.take_one()
    }

    /// Runs `body`: the acquisition (the lock call or calls on `lock`), then what
    /// follows it. `body` calls the first function it is given before its first call
    /// that may wait: that starts a watcher thread which, when a signal comes, records
    /// it and cancels the acquisition (a signal that came earlier waits in the
    /// signalfd); an acquisition that never waits makes no thread. `body` calls the
    /// second function once the acquisition is over: from then on the watcher reads
    /// nothing, and [`Signals::caught`] says every signal it recorded. The watcher is
    /// told to end then, but not waited for until `body` returns, so that the command
    /// does not wait for a thread's exit (a wake-up of another CPU) to start.
    pub fn during<T>(
        &self,
        lock: &Lock,
        body: impl FnOnce(&mut dyn FnMut(), &mut dyn FnMut()) -> T,
    ) -> T {
        let Some(fd) = &self.fd else {
            return body(&mut || {}, &mut || {});
        };
        let stop: OnceLock<sys::Event> = OnceLock::new();
        std::thread::scope(|scope| {
            let mut start = || {
                if stop.get().is_some() {
                    return;
                }
                let Ok(event) = sys::Event::new() else {
                    return;
                };
                let stop = stop.get_or_init(|| event);
                // The watcher starts with SIGCHLD blocked, as every thread of
                // `unilock` has it once the command is forked: a thread that did
                // not block it could be the one the command's SIGCHLD is delivered
                // to, whose default action then discards it, and the signalfd would
                // never say that the command ended.
                let mask = sys::block(&sys::SigSet::of(&[libc::SIGCHLD]));
                let _ = std::thread::Builder::new()
                    .name("signals".to_string())
                    .spawn_scoped(scope, move || self.watch(fd, stop, lock));
                sys::set_mask(&mask);
            };
            let mut end = || {
                *self.watching.lock().unwrap_or_else(|p| p.into_inner()) = false;
                if let Some(stop) = stop.get() {
                    stop.set();
                }
            };
            body(&mut start, &mut end)
        })
    }

    /// The watcher: waits for a signal or `stop`; after a signal, cancels the lock
    /// calls on `lock` until `stop`.
    fn watch(&self, fd: &sys::SignalFd, stop: &sys::Event, lock: &Lock) {
        loop {
            let [signal, stopped] = sys::poll([fd.as_fd(), stop.as_fd()], None);
            if stopped {
                return;
            }
            if signal && self.caught_while_watching().is_some() {
                break;
            }
        }
        loop {
            lock.cancel();
            if let [true] = sys::poll([stop.as_fd()], Some(CANCEL_AGAIN)) {
                return;
            }
        }
    }

    /// Makes SIGCHLD readable from the signalfd, before the command is forked: its exit
    /// then wakes [`Signals::wait_for`] however late it comes. SIGCHLD is blocked in
    /// the calling thread and in the threads it starts afterwards: a thread started
    /// before, that does not block it, could take it instead (an etcd lock's lease
    /// thread), so an etcd lock calls this before it is taken.
    pub fn before_fork(&self) {
        if self.fd.is_some() {
            sys::block(&sys::SigSet::of(&[libc::SIGCHLD]));
        }
    }

    /// The signal mask the command starts with: the one `unilock` started with.
    pub fn command_mask(&self) -> &sys::SigSet {
        &self.original
    }

    /// Waits for the command `pid`, passing on the signals `unilock` gets meanwhile,
    /// and says how `unilock` must end.
    pub fn wait_for(&self, pid: libc::pid_t) -> Result<(sys::Status, Option<i32>), sys::Errno> {
        let Some(fd) = &self.fd else {
            return sys::wait(pid).map(|status| (status, None));
        };
        let mut received = None;
        loop {
            if let Some(status) = sys::wait_nohang(pid)? {
                return Ok((status, received));
            }
            sys::poll([fd.as_fd()], None);
            while let Some(c) = fd.take() {
                if c.signal == libc::SIGCHLD {
                    continue;
                }
                received.get_or_insert(c.signal);
                let from_terminal =
                    c.by_kernel && (c.signal == libc::SIGINT || c.signal == libc::SIGQUIT);
                if !from_terminal {
                    sys::kill(pid, c.signal);
                }
            }
        }
    }
}
