//! The transport under every ractor_cluster session between Syncra processes: a connected
//! Unix stream socket (a child's inherited socketpair end), read and written without waking
//! anybody needlessly.
//!
//! A tokio `UnixStream` registers for readable *and* writable readiness, so each time one side
//! reads, the kernel signals "writable again" to the other side's epoll and wakes its reactor
//! for nothing — one wasted wakeup per message, in every process, on the control path. Here
//! the read half is registered for readable readiness only and reads through a buffer (one
//! `recv` usually yields a whole message: ractor_cluster reads a length and then the body);
//! the write half writes directly and registers for writable readiness only while the socket
//! is full, which on this control path is almost never.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, Shutdown};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// How every [`UnixLink`]'s peer label begins: ractor_cluster reports it as the session's
/// peer address, where a TCP session shows `ip:port` ([`crate::listener::is_stranger`]).
pub const LINK_LABEL_PREFIX: &str = "unix:";

/// How much one read takes from the socket at most.
const READ_BUFFER: usize = 64 * 1024;

/// A connected Unix stream socket as a ractor_cluster transport.
#[derive(Debug)]
pub struct UnixLink {
    reader: LinkReader,
    writer: LinkWriter,
    label: String,
}

impl UnixLink {
    /// Wrap a connected Unix stream socket; `label` names the peer in ractor_cluster's session
    /// information, and is how the runtime matches a session to the child it spawned. Call it
    /// inside a tokio runtime (the read half registers with its reactor).
    pub fn new(
        socket: std::os::unix::net::UnixStream,
        label: impl Into<String>,
    ) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let write_fd = OwnedFd::from(socket.try_clone()?);
        let read_fd = register(OwnedFd::from(socket), Interest::READABLE)?;
        Ok(Self {
            reader: LinkReader {
                fd: read_fd,
                buf: vec![0; READ_BUFFER].into_boxed_slice(),
                start: 0,
                end: 0,
            },
            writer: LinkWriter {
                fd: write_fd,
                full: None,
            },
            label: label.into(),
        })
    }
}

impl ClusterBidiStream for UnixLink {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        (Box::new(self.reader), Box::new(self.writer))
    }
    fn peer_label(&self) -> Option<String> {
        Some(format!("{LINK_LABEL_PREFIX}{}", self.label))
    }
    fn local_label(&self) -> Option<String> {
        Some(format!("{LINK_LABEL_PREFIX}{}:local", self.label))
    }
}

/// The read half: readable readiness only, through a buffer.
#[derive(Debug)]
struct LinkReader {
    fd: AsyncFd<OwnedFd>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl AsyncRead for LinkReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            loop {
                let mut guard = ready!(this.fd.poll_read_ready(cx))?;
                let buf = &mut this.buf;
                match guard.try_io(|fd| recv(fd.get_ref(), buf)) {
                    Ok(Ok(n)) => {
                        (this.start, this.end) = (0, n);
                        break;
                    }
                    Ok(Err(e)) => return Poll::Ready(Err(e)),
                    Err(_would_block) => continue,
                }
            }
        }
        let n = (this.end - this.start).min(out.remaining());
        out.put_slice(&this.buf[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is an open descriptor for as long as it lives, and the `AsyncFd`
    // owns it, so it stays open and the same for the registration's whole life.
    Ok(unsafe { AsyncFd::register_with_interest(fd, interest) }?)
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::net::recv(fd, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((n, _)) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The write half: direct writes; writable readiness is registered only while the socket is
/// full.
#[derive(Debug)]
struct LinkWriter {
    fd: OwnedFd,
    full: Option<AsyncFd<OwnedFd>>,
}

fn send(fd: impl AsFd, data: &[u8]) -> io::Result<usize> {
    loop {
        match rustix::net::send(fd.as_fd(), data, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl AsyncWrite for LinkWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let Some(full) = &this.full else {
                match send(&this.fd, data) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Registering reports the current state, so a reader that drained the
                        // socket in between is not missed.
                        this.full = Some(register(this.fd.try_clone()?, Interest::WRITABLE)?);
                        continue;
                    }
                    done => return Poll::Ready(done),
                }
            };
            let mut guard = ready!(full.poll_write_ready(cx))?;
            if let Ok(done) = guard.try_io(|fd| send(fd, data)) {
                drop(guard);
                // Room again: stop listening for writability.
                this.full = None;
                return Poll::Ready(done);
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown_write(&self.fd))
    }
}

fn shutdown_write(fd: &OwnedFd) -> io::Result<()> {
    match rustix::net::shutdown(fd, Shutdown::Write) {
        Ok(()) | Err(Errno::NOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Drop for LinkWriter {
    /// As tokio's write half does: the peer reads end-of-stream once this side stops writing.
    fn drop(&mut self) {
        let _ = shutdown_write(&self.fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (Box<UnixLink>, Box<UnixLink>) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (
            Box::new(UnixLink::new(a, "a").unwrap()),
            Box::new(UnixLink::new(b, "b").unwrap()),
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bytes_arrive_in_order_across_small_reads_and_a_full_socket() {
        let (a, b) = pair();
        let (_ar, mut aw) = a.split();
        let (mut br, _bw) = b.split();
        // Far more than the socket buffer holds, so the writer meets a full socket and must
        // wait for the reader.
        let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            aw.write_all(&sent).await.unwrap();
            aw.flush().await.unwrap();
            drop(aw);
        });
        let mut got = Vec::new();
        let mut small = [0u8; 8];
        // A few 8-byte reads (as ractor_cluster reads a length), then the rest.
        for _ in 0..4 {
            br.read_exact(&mut small).await.unwrap();
            got.extend_from_slice(&small);
        }
        br.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes arrived changed or out of order");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_the_write_half_ends_the_peers_stream_and_a_closed_peer_is_an_error() {
        let (a, b) = pair();
        let (_ar, aw) = a.split();
        let (mut br, mut bw) = b.split();
        drop(aw);
        let mut buf = [0u8; 4];
        assert_eq!(br.read(&mut buf).await.unwrap(), 0, "end of stream");
        drop(_ar);
        // The peer is gone entirely: writing fails (EPIPE) instead of raising SIGPIPE.
        let mut failed = false;
        for _ in 0..4 {
            if bw.write_all(&[1; 1024]).await.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "writing to a closed peer must fail");
    }
}
