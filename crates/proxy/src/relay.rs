//! Copying a connection's bytes both ways, counted into Istio's TCP metrics as they pass (a
//! long-lived connection shows its traffic before it ends).

use crate::telemetry::{Telemetry, TrafficLabels};
use prometheus_client::metrics::counter::Counter;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Large enough for TLS records (16 KiB) to go through in few system calls.
const BUFFER: usize = 64 * 1024;

/// A stream whose reads are added to a counter.
pub struct Counted<S> {
    inner: S,
    read: Counter,
}

impl<S> Counted<S> {
    pub fn new(inner: S, read: Counter) -> Self {
        Counted { inner, read }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.read.inc_by(read as u64);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
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

/// Counts a connection as open while it lives.
pub struct OpenConnection<'a> {
    telemetry: &'a Telemetry,
    labels: &'a TrafficLabels,
}

impl<'a> OpenConnection<'a> {
    pub fn new(telemetry: &'a Telemetry, labels: &'a TrafficLabels) -> Self {
        telemetry.tcp_opened.get_or_create(labels).inc();
        telemetry.active_connections.inc();
        OpenConnection { telemetry, labels }
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.telemetry.tcp_closed.get_or_create(self.labels).inc();
        self.telemetry.active_connections.dec();
    }
}

/// Copies until both directions are done. Returns (from downstream, from upstream) byte counts.
pub async fn relay_tcp<D, U>(
    downstream: D,
    upstream: U,
    telemetry: &Telemetry,
    labels: &TrafficLabels,
) -> io::Result<(u64, u64)>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let _open = OpenConnection::new(telemetry, labels);
    let mut downstream = Counted::new(
        downstream,
        telemetry.tcp_received.get_or_create_owned(labels),
    );
    let mut upstream = Counted::new(upstream, telemetry.tcp_sent.get_or_create_owned(labels));
    tokio::io::copy_bidirectional_with_sizes(&mut downstream, &mut upstream, BUFFER, BUFFER).await
}
