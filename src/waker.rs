//! Cross-thread wake-ups: an `eventfd` registered in the reactor.
//!
//! `call_soon_threadsafe` from another thread pushes its handle into the ready queue (under the
//! GIL) and, only when the loop thread is blocked in `epoll_wait`, writes to this eventfd so the
//! poll returns. The loop drains the counter when the eventfd reports readable.

use std::io;
use std::os::fd::RawFd;

/// An owned, non-blocking, close-on-exec eventfd.
pub struct Waker {
    fd: RawFd,
}

impl Waker {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with constant flags; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Waker { fd })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Makes the eventfd readable. A full counter (EAGAIN) already means "readable": ignore.
    pub fn wake(&self) {
        if self.fd < 0 {
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd.
        unsafe {
            libc::write(self.fd, &one as *const u64 as *const libc::c_void, 8);
        }
    }

    /// Resets the counter so the eventfd stops reporting readable.
    pub fn drain(&self) {
        if self.fd < 0 {
            return;
        }
        let mut buf: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64 from our own non-blocking eventfd.
        unsafe {
            libc::read(self.fd, &mut buf as *mut u64 as *mut libc::c_void, 8);
        }
    }

    pub fn close(&mut self) {
        if self.fd >= 0 {
            // SAFETY: we own this fd and forget it right after closing.
            unsafe {
                libc::close(self.fd);
            }
            self.fd = -1;
        }
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        self.close();
    }
}
