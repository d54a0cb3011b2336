//! Waking a queue thread from the engine thread.
//!
//! A queue thread sleeps in `io_uring_enter` until one of its ring's operations completes;
//! a future woken from another thread (the engine's reply) is only noticed when the thread
//! comes back from there. So every queue ring keeps a read of this eventfd in flight, and the
//! engine thread writes the eventfd after each reply: the read completes, the thread wakes
//! and runs the tasks whose replies arrived. (The stock idle timeout would add up to its whole
//! length to every request.)

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, types};
use libublk::io::UblkQueue;

#[derive(Debug)]
pub struct Notifier {
    fd: OwnedFd,
}

impl Notifier {
    /// A blocking eventfd: io_uring waits on it (a non-blocking one would fail the read at
    /// once with EAGAIN).
    pub fn new() -> std::io::Result<Notifier> {
        // SAFETY: plain syscall; the fd returned is owned by the OwnedFd below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        Ok(Notifier { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wakes the queue thread. Called from the engine thread after a reply was sent.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        let n = unsafe { libc::write(self.raw(), (&one as *const u64).cast(), 8) };
        // The counter only overflows after 2^64-2 unread wakeups; anything else is a bug.
        debug_assert!(n == 8, "eventfd write failed: {}", std::io::Error::last_os_error());
    }
}

/// Keeps one read of the eventfd in flight on the queue's ring, for as long as the queue
/// runs. Each completed read means "replies arrived": the ring loop then runs the woken tasks.
pub async fn keep_armed(q: &UblkQueue<'_>, n: &Notifier) {
    // The kernel may still complete a read into this buffer while the ring is being torn
    // down, after this task is gone: 8 bytes per queue are leaked so that it never points
    // to freed memory.
    let counter: &'static mut u64 = Box::leak(Box::new(0u64));
    loop {
        let sqe = opcode::Read::new(types::Fd(n.raw()), (&mut *counter as *mut u64).cast(), 8).build();
        let res = q.ublk_submit_sqe(sqe).await;
        if res < 0 && res != -libc::EINTR && res != -libc::EAGAIN {
            tracing::error!("queue {}: eventfd read failed: {}", q.get_qid(), std::io::Error::from_raw_os_error(-res));
            return;
        }
    }
}
