//! The epoll reactor: one level-triggered epoll instance per loop, plus the registry that maps
//! each watched file descriptor to what wants it (a reader callback, a writer callback).
//!
//! Level-triggered mode matches asyncio's selector semantics: a reader callback that leaves data
//! in the socket is called again on the next iteration. The registry is the single source of
//! truth for the interest mask of every fd; `epoll_ctl` is only called when the mask changes.
//! An fd closed behind our back disappears from epoll by itself, so `MOD` falling back to `ADD`
//! (and `ADD` to `MOD`) keeps the kernel's view and ours consistent.
//!
//! Lingering registrations: when the last `sock_*` waiter of a socket leaves (its operation
//! completed), the kernel registration is kept and the socket object remembered. The next
//! `sock_*` wait on the same, still open socket object reuses it without any `epoll_ctl`; the
//! registrations still unused when the loop is about to block are removed then. A request-reply
//! loop over `sock_recv`/`sock_sendall` therefore costs no `epoll_ctl` per message. Only
//! socket operations linger: for them the socket object proves that the fd still names the
//! same open file (an fd closed and reused by another file would otherwise keep a stale
//! registration).

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;

use pyo3::prelude::*;

use crate::handles::Handle;
use crate::sockops::SockWaiter;
use crate::transports::datagram::DatagramTransport;
use crate::transports::stream::StreamTransport;

pub const READABLE: u32 = libc::EPOLLIN as u32;
pub const WRITABLE: u32 = libc::EPOLLOUT as u32;
const ERROR_BITS: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

/// Interpreted readiness of one fd, as asyncio's epoll selector reports it: an error or hang-up
/// wakes both the reader and the writer so each can observe the failure.
pub fn event_is_readable(events: u32) -> bool {
    events & (READABLE | ERROR_BITS | libc::EPOLLRDHUP as u32) != 0
}

pub fn event_is_writable(events: u32) -> bool {
    events & (WRITABLE | ERROR_BITS) != 0
}

/// What waits on one direction of an fd: a Python callback (`add_reader`/`add_writer`), or a
/// native transport (stream or datagram), which the loop drives directly without a callback
/// object in between.
pub enum Io {
    Handle(Py<Handle>),
    Stream(Py<StreamTransport>),
    Datagram(Py<DatagramTransport>),
    Sock(Py<SockWaiter>),
}

impl Io {
    pub fn clone_ref(&self, py: Python<'_>) -> Io {
        match self {
            Io::Handle(h) => Io::Handle(h.clone_ref(py)),
            Io::Stream(t) => Io::Stream(t.clone_ref(py)),
            Io::Datagram(t) => Io::Datagram(t.clone_ref(py)),
            Io::Sock(w) => Io::Sock(w.clone_ref(py)),
        }
    }
}

/// Who is interested in one fd.
#[derive(Default)]
pub struct FdEntry {
    pub reader: Option<Io>,
    pub writer: Option<Io>,
    /// The mask currently registered with the kernel (0 = not registered).
    registered: u32,
    /// The socket object whose registration lingers (see the module docs).
    linger: Option<Py<PyAny>>,
    /// Listed in `Reactor::lingering` (each fd at most once, however often it lingers).
    listed: bool,
    /// Address of the file object last given to `add_reader`/`add_writer` for this fd (0 for
    /// a plain int). Only compared, never dereferenced: it finds the registration of a socket
    /// closed since (its `fileno()` is -1), as asyncio's selector finds it by the object.
    pub fileobj_id: usize,
}

impl FdEntry {
    fn wanted(&self) -> u32 {
        let mut m = 0;
        if self.reader.is_some() {
            m |= READABLE;
        }
        if self.writer.is_some() {
            m |= WRITABLE;
        }
        m
    }
}

/// An epoll instance and the registry of watched fds.
pub struct Reactor {
    epfd: RawFd,
    pub fds: HashMap<RawFd, FdEntry>,
    /// fds whose registration lingers, to remove before the loop blocks.
    lingering: Vec<RawFd>,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Reactor {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; result checked.
        let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Reactor {
            epfd,
            fds: HashMap::new(),
            lingering: Vec::new(),
        })
    }

    pub fn epfd(&self) -> RawFd {
        self.epfd
    }

    /// Registers `fd` with a fixed mask outside the registry (used for the waker).
    pub fn add_raw(&self, fd: RawFd, mask: u32) -> io::Result<()> {
        ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, mask)
    }

    /// Installs `handle` as the reader (or writer) of `fd`. Returns what it replaces.
    /// On a kernel error nothing changes; the error and the rejected waiter are returned.
    #[allow(clippy::type_complexity)]
    pub fn set(
        &mut self,
        fd: RawFd,
        handle: Io,
        write: bool,
    ) -> Result<Option<Io>, (io::Error, Option<Io>)> {
        self.set_checked(fd, handle, write, None)
            .map(|(old, _)| old)
    }

    /// `set` for a `sock_*` waiter on `sock` (whose `fileno()` is `fd` right now): a lingering
    /// registration of that same socket object is reused as it is. Also returns the socket
    /// object that lingered, for the caller to drop outside the loop's state.
    #[allow(clippy::type_complexity)]
    pub fn set_sock(
        &mut self,
        fd: RawFd,
        waiter: Io,
        write: bool,
        sock: &Bound<'_, PyAny>,
    ) -> Result<(Option<Io>, Option<Py<PyAny>>), (io::Error, Option<Io>)> {
        self.set_checked(fd, waiter, write, Some(sock.as_ptr() as usize))
    }

    #[allow(clippy::type_complexity)]
    fn set_checked(
        &mut self,
        fd: RawFd,
        handle: Io,
        write: bool,
        sock: Option<usize>,
    ) -> Result<(Option<Io>, Option<Py<PyAny>>), (io::Error, Option<Io>)> {
        let epfd = self.epfd;
        let entry = self.fds.entry(fd).or_default();
        let lingered = entry.linger.take();
        if let Some(l) = &lingered {
            // Only the same socket object proves the kernel still has this file registered.
            if sock != Some(l.as_ptr() as usize) {
                entry.registered = 0;
            }
        }
        let slot = if write {
            &mut entry.writer
        } else {
            &mut entry.reader
        };
        let old = slot.replace(handle);
        let wanted = entry.wanted();
        match sync(epfd, fd, entry.registered, wanted) {
            Ok(()) => {
                entry.registered = wanted;
                Ok((old, lingered))
            }
            Err(e) => {
                entry.linger = lingered;
                let slot = if write {
                    &mut entry.writer
                } else {
                    &mut entry.reader
                };
                let rejected = std::mem::replace(slot, old);
                if entry.reader.is_none() && entry.writer.is_none() {
                    self.fds.remove(&fd);
                }
                Err((e, rejected))
            }
        }
    }

    /// Removes a `sock_*` waiter of `fd`; when no waiter is left, the registration lingers
    /// (module docs) instead of being removed now. `sock` is the waiter's socket object.
    pub fn release_sock(&mut self, fd: RawFd, write: bool, sock: Py<PyAny>) -> Option<Io> {
        let entry = self.fds.get_mut(&fd)?;
        let slot = if write {
            &mut entry.writer
        } else {
            &mut entry.reader
        };
        let old = slot.take();
        if entry.wanted() == 0 && entry.registered != 0 && entry.linger.is_none() {
            entry.linger = Some(sock);
            if !entry.listed {
                entry.listed = true;
                self.lingering.push(fd);
                if self.lingering.len() > 4 * self.fds.len() + 1024 {
                    // Entries removed and re-created while the loop never blocked can list an
                    // fd twice: keep the list proportional to the registry.
                    self.lingering.sort_unstable();
                    self.lingering.dedup();
                    let fds = &self.fds;
                    self.lingering.retain(|fd| fds.contains_key(fd));
                }
            }
        } else {
            let wanted = entry.wanted();
            let _ = sync(self.epfd, fd, entry.registered, wanted);
            entry.registered = wanted;
            if wanted == 0 {
                self.fds.remove(&fd);
            }
        }
        old
    }

    /// Removes the lingering registrations nobody reused (before the loop blocks). Returns
    /// the socket objects they kept, for the caller to drop outside the loop's state.
    pub fn drop_lingering(&mut self) -> Vec<Py<PyAny>> {
        let mut out = Vec::new();
        for fd in std::mem::take(&mut self.lingering) {
            let Some(entry) = self.fds.get_mut(&fd) else {
                continue;
            };
            entry.listed = false;
            let Some(sock) = entry.linger.take() else {
                continue;
            };
            out.push(sock);
            if entry.wanted() == 0 {
                // A failure means the fd was closed: it is gone from epoll either way.
                let _ = sync(self.epfd, fd, entry.registered, 0);
                self.fds.remove(&fd);
            }
        }
        out
    }

    pub fn has_lingering(&self) -> bool {
        !self.lingering.is_empty()
    }

    /// The fd whose registration was made with the file object at address `id`.
    pub fn fd_of_fileobj(&self, id: usize) -> Option<RawFd> {
        if id == 0 {
            return None;
        }
        self.fds
            .iter()
            .find(|(_, e)| e.fileobj_id == id)
            .map(|(fd, _)| *fd)
    }

    /// Forgets every registration of `fd`, whose file is already closed (the kernel dropped
    /// it from epoll by itself). Returns what was registered.
    pub fn forget_closed(&mut self, fd: RawFd) -> (Option<Io>, Option<Io>, Option<Py<PyAny>>) {
        match self.fds.remove(&fd) {
            Some(e) => (e.reader, e.writer, e.linger),
            None => (None, None, None),
        }
    }

    /// Removes the reader (or writer) of `fd`, returning it if there was one.
    pub fn clear(&mut self, fd: RawFd, write: bool) -> Option<Io> {
        let entry = self.fds.get_mut(&fd)?;
        let old = if write {
            entry.writer.take()
        } else {
            entry.reader.take()
        };
        old.as_ref()?;
        let registered = entry.registered;
        let wanted = entry.wanted();
        let empty = wanted == 0;
        // A failure here means the fd was closed; it is gone from epoll either way.
        let _ = sync(self.epfd, fd, registered, wanted);
        if empty {
            self.fds.remove(&fd);
        } else if let Some(e) = self.fds.get_mut(&fd) {
            e.registered = wanted;
        }
        old
    }

    /// Waits for events. Returns the number of entries filled in `buf` (0 on EINTR).
    pub fn wait(epfd: RawFd, buf: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: `buf` is a valid, writable slice of epoll_event of the given length.
        let n = unsafe {
            libc::epoll_wait(
                epfd,
                buf.as_mut_ptr(),
                buf.len().min(i32::MAX as usize) as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                return Ok(0);
            }
            return Err(err);
        }
        Ok(n as usize)
    }

    /// Drops every registration and closes the epoll fd. Returns the handles for the caller to
    /// cancel and drop outside of any borrow.
    pub fn close(&mut self) -> (Vec<Io>, Vec<Py<PyAny>>) {
        let mut out = Vec::new();
        let mut socks = Vec::new();
        self.lingering.clear();
        for (_, e) in self.fds.drain() {
            out.extend(e.reader);
            out.extend(e.writer);
            socks.extend(e.linger);
        }
        if self.epfd >= 0 {
            // SAFETY: we own the epoll fd and forget it right after.
            unsafe {
                libc::close(self.epfd);
            }
            self.epfd = -1;
        }
        (out, socks)
    }

    pub fn is_closed(&self) -> bool {
        self.epfd < 0
    }
}

fn ctl(epfd: RawFd, op: libc::c_int, fd: RawFd, mask: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: mask,
        u64: fd as u32 as u64,
    };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    cvt(unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) })?;
    Ok(())
}

/// Brings the kernel's mask for `fd` in line with `wanted`.
fn sync(epfd: RawFd, fd: RawFd, registered: u32, wanted: u32) -> io::Result<()> {
    if wanted == registered {
        return Ok(());
    }
    if wanted == 0 {
        // The fd may already be closed (and so gone from epoll): nothing to report.
        let _ = ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0);
        return Ok(());
    }
    if registered == 0 {
        match ctl(epfd, libc::EPOLL_CTL_ADD, fd, wanted) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                ctl(epfd, libc::EPOLL_CTL_MOD, fd, wanted)
            }
            r => r,
        }
    } else {
        match ctl(epfd, libc::EPOLL_CTL_MOD, fd, wanted) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                ctl(epfd, libc::EPOLL_CTL_ADD, fd, wanted)
            }
            r => r,
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        if self.epfd >= 0 {
            // SAFETY: we own the epoll fd.
            unsafe {
                libc::close(self.epfd);
            }
            self.epfd = -1;
        }
    }
}
