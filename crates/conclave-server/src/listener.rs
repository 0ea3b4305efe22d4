//! A TCP listener that counts its connections and enforces
//! `server.max_connections`.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Pause after an accept error (typically EMFILE) so a full file table does
/// not turn the accept loop into a busy loop.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 50;

/// Connections the kernel completes while the server has not accepted them
/// yet (capped by `net.core.somaxconn`). The usual 128 is too few when many
/// clients reconnect at once: the kernel drops the SYNs beyond it and those
/// clients wait a second for the retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener with room for a burst of connections.
pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted server may bind the port
    // while connections of its previous run linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

pub(crate) struct CountingListener {
    inner: TcpListener,
    transport: &'static str,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    deadlines: ReadDeadlines,
}

/// How long a connection may stay silent: before its first byte (a client
/// that connects and sends nothing would otherwise hold a slot forever), and
/// between reads afterwards.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadDeadlines {
    pub first_byte: Duration,
    pub idle: Duration,
}

impl CountingListener {
    pub async fn bind(
        addr: SocketAddr,
        transport: &'static str,
        slots: Arc<Semaphore>,
        metrics: Arc<Metrics>,
        deadlines: ReadDeadlines,
    ) -> io::Result<Self> {
        Ok(Self {
            inner: bind_tcp(addr)?,
            transport,
            slots,
            metrics,
            deadlines,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl axum::serve::Listener for CountingListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, transport = self.transport, "accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                    continue;
                }
            };
            // Over the cap the connection is closed at once: a fast refusal
            // lets the client try another node instead of hanging.
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                self.metrics
                    .connections_rejected
                    .with_label_values(&[self.transport])
                    .inc();
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let gauge = self
                .metrics
                .connections
                .with_label_values(&[self.transport]);
            gauge.inc();
            return (
                CountedStream {
                    inner: stream,
                    _permit: permit,
                    gauge,
                    deadlines: self.deadlines,
                    silence: Box::pin(tokio::time::sleep(self.deadlines.first_byte)),
                },
                peer,
            );
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The client's address, as handlers extract it with
/// `ConnectInfo<PeerAddr>`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, CountingListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, CountingListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A connection that gives back its slot and decrements the gauge when
/// dropped.
pub(crate) struct CountedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
    deadlines: ReadDeadlines,
    /// Fires when the peer has been silent too long; reset by every read.
    silence: Pin<Box<tokio::time::Sleep>>,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.deadlines.idle;
                    self.silence.as_mut().reset(next);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.silence.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Many clients connecting at once all get through the handshake
    /// before the server accepts any of them.
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_backlog() {
        const BURST: usize = 600;
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..BURST)
            .map(|_| tokio::time::timeout(Duration::from_millis(800), TcpStream::connect(addr)));
        let results = futures_util::future::join_all(connects).await;
        let connected = results
            .into_iter()
            .filter(|r| matches!(r, Ok(Ok(_))))
            .count();
        assert_eq!(connected, BURST, "connections dropped by a full backlog");
        drop(listener);
    }
}
