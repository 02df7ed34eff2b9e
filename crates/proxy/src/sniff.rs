//! Protocol detection from a connection's first bytes (Envoy's `http_inspector`): the HTTP/2
//! connection preface, or an HTTP/1.x request line's method; anything else is opaque TCP. The
//! bytes read are replayed ([`Rewind`]), so the detection costs the connection nothing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tcp,
}

impl Detected {
    pub fn log_name(self) -> Option<&'static str> {
        match self {
            Detected::Http1 => Some("HTTP/1.1"),
            Detected::Http2 => Some("HTTP/2"),
            Detected::Tcp => None,
        }
    }
}

/// What the bytes so far say; `None` when they could still be either.
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    if prefix.is_empty() {
        return None;
    }
    let could_be = |pattern: &[u8]| {
        let n = prefix.len().min(pattern.len());
        prefix[..n] == pattern[..n]
    };
    if prefix.starts_with(H2_PREFACE) {
        return Some(Detected::Http2);
    }
    if METHODS.iter().any(|method| prefix.starts_with(method)) {
        return Some(Detected::Http1);
    }
    if could_be(H2_PREFACE) || METHODS.iter().any(|method| could_be(method)) {
        return None;
    }
    Some(Detected::Tcp)
}

/// A stream that first replays bytes already read from it.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    position: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Rewind {
            prefix,
            position: 0,
            inner,
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.position < self.prefix.len() {
            let left = &self.prefix[self.position..];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            self.position += n;
            if self.position == self.prefix.len() {
                self.prefix = Vec::new();
                self.position = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
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

/// Reads until the protocol is known, the client goes quiet for `wait` (then: TCP), or the
/// connection ends. The stream comes back with everything read still to be read.
pub async fn detect<S: AsyncRead + Unpin>(mut stream: S, wait: Duration) -> (Detected, Rewind<S>) {
    let mut prefix = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(found) = classify(&prefix) {
            return (found, Rewind::new(prefix, stream));
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(read)) if read > 0 => prefix.extend_from_slice(&chunk[..read]),
            _ => return (Detected::Tcp, Rewind::new(prefix, stream)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn request_lines_and_the_h2_preface_are_recognised_early() {
        assert_eq!(classify(b"GET /hello HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"OPTIONS "), Some(Detected::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"PRI * HT"), None, "could still be the preface");
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(Detected::Tcp), "TLS");
        assert_eq!(classify(b"GETS"), Some(Detected::Tcp));
        assert_eq!(classify(b"ping"), Some(Detected::Tcp));
    }

    #[tokio::test]
    async fn detection_replays_what_it_read_and_gives_up_on_quiet_clients() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (found, mut stream) = detect(server, Duration::from_secs(5)).await;
        assert_eq!(found, Detected::Http1);
        let mut replayed = vec![0u8; 18];
        stream.read_exact(&mut replayed).await.unwrap();
        assert_eq!(replayed, b"GET / HTTP/1.1\r\n\r\n");

        let (mut quiet_client, server) = tokio::io::duplex(1024);
        quiet_client.write_all(b"GE").await.unwrap();
        let started = std::time::Instant::now();
        let (found, mut stream) = detect(server, Duration::from_millis(100)).await;
        assert_eq!(found, Detected::Tcp);
        assert!(started.elapsed() >= Duration::from_millis(100));
        let mut replayed = [0u8; 2];
        stream.read_exact(&mut replayed).await.unwrap();
        assert_eq!(&replayed, b"GE");
    }
}
