//! The epoll calls of the parking lot ([`crate::park`]) behind a safe interface:
//! every `unsafe` block of the lot is here. Linux only; elsewhere [`Epoll::new`]
//! fails and the lot is never used.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// An epoll instance that watches sockets for input or a hang-up, level-triggered,
/// each under a token of the caller's.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

/// How many ready sockets one `epoll_wait` reports at most.
const BATCH: usize = 256;

impl Epoll {
    /// A new instance (close-on-exec).
    #[cfg(target_os = "linux")]
    pub(crate) fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: epoll_create1 has no memory preconditions; a non-negative result is
        // a new descriptor that we own from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is open and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    /// No epoll here.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn new() -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "parking needs epoll",
        ))
    }

    /// Any descriptor as if it were an instance, for tests of what happens when
    /// `epoll_wait` fails.
    #[cfg(test)]
    pub(crate) fn from_fd(fd: OwnedFd) -> Self {
        Epoll { fd }
    }

    /// Watches `socket` for input or a hang-up, reported with `token`.
    #[cfg(target_os = "linux")]
    pub(crate) fn add(&self, socket: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open for the call (borrowed); `event` lives
        // through it.
        let rc = unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                socket.as_raw_fd(),
                &mut event,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn add(&self, _socket: BorrowedFd<'_>, _token: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Stops watching `socket`. A socket that was not watched is no error worth
    /// reporting: there is nothing to undo.
    #[cfg(target_os = "linux")]
    pub(crate) fn delete(&self, socket: BorrowedFd<'_>) {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are open for the call (borrowed); a null event is
        // allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                socket.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn delete(&self, _socket: BorrowedFd<'_>) {}

    /// Appends the tokens of up to [`BATCH`] ready sockets to `ready`, in the order
    /// they became ready, without waiting. `Ok(true)`: that was all of them;
    /// `Ok(false)`: there may be more, or the call was interrupted (EINTR): take
    /// these off the set (level-triggered, they would be reported again) and ask
    /// again.
    #[cfg(target_os = "linux")]
    pub(crate) fn ready(&self, ready: &mut Vec<u64>) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        // SAFETY: `events` has room for BATCH entries; timeout 0 never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                BATCH as libc::c_int,
                0,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(error);
        };
        ready.extend(events[..n].iter().map(|e| e.u64));
        Ok(n < BATCH)
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn ready(&self, _ready: &mut Vec<u64>) -> io::Result<bool> {
        Ok(true)
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
