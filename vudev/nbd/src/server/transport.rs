//! The byte streams the server talks over: the [`Transport`] trait (sockets, or an
//! in-memory pipe for the fuzzer), the buffered request side and the reply side shared
//! by a connection's workers.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A byte stream the server can talk NBD over.
pub trait Transport: Read + Write {
    /// Sets the read timeout (the handshake has one, the transmission phase none);
    /// streams without timeouts ignore it.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let _ = timeout;
        Ok(())
    }

    /// Sets the write timeout (a client that stops reading is dropped after it).
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let _ = timeout;
        Ok(())
    }

    /// The socket, for `sendfile` of read replies straight from a raw image file; None
    /// (the default) for streams that are not file descriptors.
    fn socket_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// A second descriptor of the socket, for replies written by worker threads while
    /// this stream reads requests; None (requests served one at a time) otherwise.
    fn clone_socket(&self) -> Option<OwnedFd> {
        None
    }
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_write_timeout(timeout)
    }
    fn socket_fd(&self) -> Option<BorrowedFd<'_>> {
        (**self).socket_fd()
    }
    fn clone_socket(&self) -> Option<OwnedFd> {
        (**self).clone_socket()
    }
}

impl Transport for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, timeout)
    }
    fn socket_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
    fn clone_socket(&self) -> Option<OwnedFd> {
        self.try_clone().ok().map(OwnedFd::from)
    }
}

impl Transport for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
    fn socket_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
    fn clone_socket(&self) -> Option<OwnedFd> {
        self.try_clone().ok().map(OwnedFd::from)
    }
}

/// A transport read through a buffer (a burst of small requests costs one `read` call)
/// and written directly (replies are whole writes already).
pub(super) struct Buffered<S: Transport> {
    pub(super) r: io::BufReader<S>,
}

impl<S: Transport> Read for Buffered<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.r.read(buf)
    }
}

impl<S: Transport> Write for Buffered<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.r.get_mut().write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.r.get_mut().write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.r.get_mut().flush()
    }
}

impl<S: Transport> Transport for Buffered<S> {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.r.get_ref().set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.r.get_ref().set_write_timeout(timeout)
    }
    fn socket_fd(&self) -> Option<BorrowedFd<'_>> {
        self.r.get_ref().socket_fd()
    }
    fn clone_socket(&self) -> Option<OwnedFd> {
        self.r.get_ref().clone_socket()
    }
}

/// The reply side of a socket shared by a connection's workers (a `File` over the
/// socket's descriptor: `write`, `writev` and `sendfile` work on it as on the socket).
pub(super) struct SockOut(pub(super) std::fs::File);

impl Write for SockOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for SockOut {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl Transport for SockOut {
    fn socket_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.0.as_fd())
    }
}

/// Writes all of `parts` with as few calls as the stream takes (`writev`).
pub(super) fn write_parts(w: &mut impl Write, mut parts: &mut [io::IoSlice<'_>]) -> io::Result<()> {
    io::IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        match w.write_vectored(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
