//! Waking a queue thread from the engine thread.
//!
//! A queue thread sleeps in `io_uring_enter` until one of its ring's operations completes;
//! a future woken from another thread (the engine's reply) is only noticed when the thread
//! comes back from there. So every queue ring keeps a read of this eventfd in flight, and the
//! engine thread writes the eventfd after each reply: the read completes, the thread wakes
//! and runs the tasks whose replies arrived. (The stock idle timeout would add up to its whole
//! length to every request.)

use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, types};
use libublk::io::UblkQueue;
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};

#[derive(Debug)]
pub struct Notifier {
    fd: EventFd,
}

impl Notifier {
    /// A blocking eventfd: io_uring waits on it (a non-blocking one would fail the read at
    /// once with EAGAIN).
    pub fn new() -> std::io::Result<Notifier> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)?;
        Ok(Notifier { fd })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wakes the queue thread. Called from the engine thread after a reply was sent.
    pub fn notify(&self) {
        let written = self.fd.write(1);
        // The counter only overflows after 2^64-2 unread wakeups; anything else is a bug.
        debug_assert!(written == Ok(8), "eventfd write failed: {written:?}");
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
        if res < 0 && res != -(Errno::EINTR as i32) && res != -(Errno::EAGAIN as i32) {
            tracing::error!("queue {}: eventfd read failed: {}", q.get_qid(), std::io::Error::from_raw_os_error(-res));
            return;
        }
    }
}
