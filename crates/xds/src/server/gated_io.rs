//! A connection of the xDS server, wrapped so that its reads wait while the read gate is
//! closed (see `read_gate`).

use super::read_gate::ReadGate;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A connection whose reads wait while the gate is closed.
pub struct GatedIo<T> {
    inner: T,
    gate: Arc<ReadGate>,
    registered: Option<(u64, Waker)>,
}

impl<T> GatedIo<T> {
    pub(crate) fn new(inner: T, gate: Arc<ReadGate>) -> GatedIo<T> {
        GatedIo {
            inner,
            gate,
            registered: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GatedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.gate.poll_open(cx, &mut this.registered));
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GatedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for GatedIo<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::read_gate::MAX_CLOSED;
    use prometheus_client::metrics::counter::Counter;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    fn pair(gate: &Arc<ReadGate>) -> (GatedIo<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        (GatedIo::new(ours, gate.clone()), theirs)
    }

    #[tokio::test]
    async fn reads_wait_while_a_push_is_unreceived_and_writes_do_not() {
        let gate = ReadGate::start(Counter::default());
        let (mut gated, mut peer) = pair(&gate);
        peer.write_all(b"ack").await.unwrap();
        gate.after_receive(|| true);

        gated.write_all(b"push").await.unwrap();
        let mut pushed = [0; 4];
        peer.read_exact(&mut pushed).await.unwrap();
        assert_eq!(&pushed, b"push");

        let mut read = [0; 3];
        let held =
            tokio::time::timeout(Duration::from_millis(30), gated.read_exact(&mut read)).await;
        assert!(held.is_err(), "a read went ahead while the gate was closed");

        let reader = tokio::spawn(async move {
            let mut read = [0; 3];
            gated.read_exact(&mut read).await.unwrap();
            read
        });
        tokio::task::yield_now().await;
        gate.after_receive(|| false);
        let read = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the read resumes when every stream has the push")
            .unwrap();
        assert_eq!(&read, b"ack");
    }

    #[tokio::test(start_paused = true)]
    async fn a_closure_that_lasts_too_long_is_overridden_until_the_backlog_clears() {
        let overrides = Counter::default();
        let gate = ReadGate::start(overrides.clone());
        let (mut gated, mut peer) = pair(&gate);
        peer.write_all(b"a").await.unwrap();
        gate.after_receive(|| true);
        let started = Instant::now();
        let mut read = [0; 1];
        tokio::time::timeout(Duration::from_secs(5), gated.read_exact(&mut read))
            .await
            .expect("the watchdog opens the gate")
            .unwrap();
        assert!(started.elapsed() >= MAX_CLOSED);
        assert_eq!(overrides.get(), 1);

        // Overridden: further pushes with a laggard left behind do not close it again...
        gate.after_receive(|| true);
        peer.write_all(b"b").await.unwrap();
        tokio::time::timeout(Duration::from_millis(1), gated.read_exact(&mut read))
            .await
            .expect("an overridden gate stays open")
            .unwrap();
        assert_eq!(&read, b"b");

        // ...until every stream has caught up; then the next fan-out closes it.
        gate.after_receive(|| false);
        gate.after_receive(|| true);
        peer.write_all(b"c").await.unwrap();
        let held =
            tokio::time::timeout(Duration::from_millis(10), gated.read_exact(&mut read)).await;
        assert!(held.is_err(), "the gate did not close for the next fan-out");
    }
}
