//! A lease and the thread that keeps it alive.
//!
//! A lock key lives on its handle's lease: when the lease expires, etcd deletes the key
//! and the next waiter gets the lock. So the lease is renewed every third of its TTL
//! while the handle waits or holds, by one thread per lease that sleeps on a condition
//! variable in between (a timer, not a poll: it does nothing else). The lease counts as
//! lost, and every later call on the handle fails with `ENOLCK`, as soon as either is
//! true: etcd said it is gone, or no renewal was confirmed for a whole TTL, measured
//! on the boot-time clock from the moment the last confirmed renewal was sent (which
//! also counts a process stopped by SIGSTOP or a suspended machine). Then the lock
//! may already be another process's; it is never reported held.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::json;
use ureq::Agent;

use super::client::{Client, int};
use crate::{Error, Result};

/// The boot-time clock (`CLOCK_BOOTTIME`: counts a suspend), in nanoseconds.
pub(crate) fn boot_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct State {
    /// Boot-time ns at which the last confirmed renewal (or the grant) was sent.
    renewed: u64,
    /// Why the lease is lost, once it is.
    lost: Option<String>,
    /// The handle released it: the thread ends.
    stopped: bool,
    /// Renew now (`touch`), then report in `touched`.
    renew_now: bool,
    touched: Option<std::result::Result<(), String>>,
}

/// A granted lease, renewed by its thread until [`Lease::stop`].
pub(crate) struct Lease {
    pub(crate) id: i64,
    pub(crate) ttl: u32,
    state: Mutex<State>,
    cv: Condvar,
}

impl Lease {
    /// Grants a lease of `ttl` seconds and starts its keep-alive thread; `on_lost` runs
    /// on that thread when the lease is found lost (to end a wait).
    pub(crate) fn grant(
        client: &Arc<Client>,
        via: &Agent,
        ttl: u32,
        deadline: Option<Instant>,
        on_lost: impl Fn() + Send + 'static,
    ) -> Result<Arc<Lease>> {
        let sent = boot_ns();
        let answer = client.call_via(
            via,
            "/v3/lease/grant",
            &json!({"TTL": ttl.to_string()}),
            deadline,
        )?;
        let id = int(&answer["ID"]);
        let granted = int(&answer["TTL"]);
        if id == 0 || granted <= 0 {
            return Err(Error::new(
                libc::EIO,
                format!(
                    "etcd granted no lease ({})",
                    answer["error"].as_str().unwrap_or("no ID in the answer")
                ),
            ));
        }
        let lease = Arc::new(Lease {
            id,
            // etcd may raise a TTL below its minimum; renew by what it granted.
            ttl: u32::try_from(granted).unwrap_or(ttl),
            state: Mutex::new(State {
                renewed: sent,
                lost: None,
                stopped: false,
                renew_now: false,
                touched: None,
            }),
            cv: Condvar::new(),
        });
        let (l, c) = (lease.clone(), client.clone());
        let spawned = std::thread::Builder::new()
            .name("unilock-lease".into())
            .spawn(move || l.keep_alive(&c, on_lost));
        if let Err(e) = spawned {
            let _ = lease.revoke(client);
            return Err(Error::new(
                e.raw_os_error().unwrap_or(libc::EAGAIN),
                format!("cannot start the thread that keeps the etcd lease alive: {e}"),
            ));
        }
        Ok(lease)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ttl_ns(&self) -> u64 {
        u64::from(self.ttl) * 1_000_000_000
    }

    /// `Err(ENOLCK)` once the lease is lost (see the module's rule).
    pub(crate) fn check(&self) -> Result<()> {
        let mut s = self.state();
        if s.lost.is_none() && boot_ns().saturating_sub(s.renewed) >= self.ttl_ns() {
            s.lost = Some(format!(
                "no renewal of the lease was confirmed for its whole TTL ({} s): the \
                 process was paused or etcd was unreachable",
                self.ttl
            ));
        }
        match &s.lost {
            None => Ok(()),
            Some(why) => Err(Error::new(
                libc::ENOLCK,
                format!("the etcd lock was lost: {why}; another process may hold it now"),
            )),
        }
    }

    /// Renews now and waits for the answer (`touch`).
    pub(crate) fn renew_now(&self) -> Result<()> {
        let mut s = self.state();
        s.renew_now = true;
        s.touched = None;
        self.cv.notify_all();
        while s.touched.is_none() && s.lost.is_none() && !s.stopped {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        let touched = s.touched.take();
        drop(s);
        self.check()?;
        match touched {
            Some(Err(why)) => Err(Error::new(
                libc::EIO,
                format!("the etcd lease could not be renewed now: {why}"),
            )),
            _ => Ok(()),
        }
    }

    /// Ends the keep-alive thread (the lease then expires unless revoked).
    pub(crate) fn stop(&self) {
        self.state().stopped = true;
        self.cv.notify_all();
    }

    /// Stops renewing and revokes the lease, which deletes its keys at once.
    /// `Ok(false)` when etcd no longer had the lease (it expired or was revoked by
    /// someone else: its keys are gone too).
    pub(crate) fn revoke(&self, client: &Client) -> Result<bool> {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        match client.call(
            "/v3/lease/revoke",
            &json!({"ID": self.id.to_string()}),
            Some(deadline),
        ) {
            Err(e) if e.errno() == libc::ENOLCK => Ok(false),
            other => other.map(|_| true),
        }
    }

    /// The keep-alive loop (the lease's thread).
    fn keep_alive(&self, client: &Client, on_lost: impl Fn()) {
        let mut s = self.state();
        loop {
            if s.stopped || s.lost.is_some() {
                break;
            }
            let next = s.renewed + self.ttl_ns() / 3;
            let now = boot_ns();
            if now < next && !s.renew_now {
                let wait = Duration::from_nanos(next - now);
                s = self
                    .cv
                    .wait_timeout(s, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            let asked = s.renew_now;
            s.renew_now = false;
            let expires = s.renewed + self.ttl_ns();
            drop(s);
            let sent = boot_ns();
            let left = Duration::from_nanos(expires.saturating_sub(sent));
            let outcome = client.call(
                "/v3/lease/keepalive",
                &json!({"ID": self.id.to_string()}),
                Some(Instant::now() + left.max(Duration::from_millis(100))),
            );
            s = self.state();
            let failure = match outcome {
                Ok(a) if int(&a["result"]["TTL"]) > 0 => {
                    s.renewed = s.renewed.max(sent);
                    None
                }
                Ok(_) => {
                    s.lost = Some("etcd reports the lease expired".to_owned());
                    None
                }
                Err(e) if e.errno() == libc::ENOLCK => {
                    s.lost = Some("etcd reports the lease expired".to_owned());
                    None
                }
                Err(e) => Some(e.detail().to_owned()),
            };
            if asked {
                s.touched = Some(failure.clone().map_or(Ok(()), Err));
                self.cv.notify_all();
            }
            if failure.is_some() {
                if boot_ns().saturating_sub(s.renewed) >= self.ttl_ns() {
                    s.lost = Some(format!(
                        "etcd could not be reached to renew the lease within its TTL ({} s): {}",
                        self.ttl,
                        failure.unwrap_or_default()
                    ));
                } else {
                    // Try again soon, within what is left of the TTL.
                    s = self
                        .cv
                        .wait_timeout(s, Duration::from_millis(200))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    s.renew_now |= !s.stopped;
                }
            }
        }
        let lost = s.lost.is_some() && !s.stopped;
        self.cv.notify_all();
        drop(s);
        if lost {
            on_lost();
        }
    }
}
