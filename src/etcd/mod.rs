//! The ETCD backend: a lock in an etcd cluster instead of the file system, with the
//! key layout and waiting order of etcd's own `concurrency.Mutex` (see [`lock`]).
//!
//! Built with the `etcd` cargo feature (which `make` enables); without it, opening an
//! ETCD handle fails with `EOPNOTSUPP` and says so.

#[cfg(feature = "etcd")]
mod client;
#[cfg(feature = "etcd")]
mod lease;
#[cfg(feature = "etcd")]
mod lock;

#[cfg(feature = "etcd")]
pub(crate) use lock::EtcdLock;

#[cfg(not(feature = "etcd"))]
pub(crate) use absent::EtcdLock;

#[cfg(not(feature = "etcd"))]
mod absent {
    //! A build without the `etcd` feature: no ETCD handle can exist.
    use crate::wait::{CallState, Deadline};
    use crate::{Error, Holder, Mode, Options, Result};

    /// Uninhabited: [`EtcdLock::open`] always fails.
    #[derive(Debug)]
    pub(crate) enum EtcdLock {}

    impl EtcdLock {
        pub(crate) fn open(_: &str, _: &Options) -> Result<EtcdLock> {
            Err(Error::new(
                libc::EOPNOTSUPP,
                "this build of unilock has no ETCD backend (cargo feature `etcd`)",
            ))
        }
        pub(crate) fn lock(&self, _: &CallState, _: Mode, _: &Deadline) -> Result<()> {
            match *self {}
        }
        pub(crate) fn unlock(&self) -> Result<()> {
            match *self {}
        }
        pub(crate) fn fence(&self) -> Result<u64> {
            match *self {}
        }
        pub(crate) fn touch(&self) -> Result<()> {
            match *self {}
        }
        pub(crate) fn query(&self) -> Result<Option<Holder>> {
            match *self {}
        }
        pub(crate) fn list(&self) -> Result<Vec<Holder>> {
            match *self {}
        }
        pub(crate) fn wake(&self) {
            match *self {}
        }
        pub(crate) fn close(&self) -> Result<()> {
            match *self {}
        }
    }
}
