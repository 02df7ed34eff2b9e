//! Coalesces an xDS connection's writes, so that a push reaches the socket in one write per
//! connection rather than one per stream.
//!
//! h2 hands a DATA frame of more than 256 bytes to the connection without copying it, and then
//! flushes before it takes the next one. A push to the ten streams of one connection was ten
//! `writev`s, each a trip through the kernel's TCP stack: measured at 1,000 streams, one
//! `writev` per stream per change, and the kernel's share was a third of discovery's CPU.
//!
//! So writes are copied into one buffer here, and a flush is put off until the connection's
//! task has been polled again. Putting it off wakes the task, which puts it at the back of the
//! scheduler's queue: by the time it runs again the other streams of the connection have
//! queued their responses to the same push, and they go out together. A flush is put off for at
//! most about one round of the scheduler, and never with `FLUSH_AT` bytes or more buffered;
//! writes of `DIRECT_AT` bytes or more are not copied.
//!
//! Telling the rounds apart: h2 reads (or tries to) at the start of every poll of its
//! connection, and writes and flushes after. So a read after a put-off flush means the task has
//! been polled again; the first flush of that poll that follows no write (h2 has handed over
//! everything it had) is the one that goes out.

use prometheus_client::metrics::counter::Counter;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Bytes held before a flush goes out no matter what.
pub(crate) const FLUSH_AT: usize = 64 * 1024;
/// Writes this large go straight to the socket (after what is held): a full-state response
/// comes in 16 KiB frames that gain nothing from batching, and copying them was two thirds of
/// the pages discovery first touched while 5,000 streams synced at once.
pub(crate) const DIRECT_AT: usize = 8 * 1024;
/// Flushes put off in one round before one goes out anyway. Only reached if the connection is
/// polled without reading, which h2 does not do: a bound, not a tuning knob.
const MAX_PUT_OFFS: u32 = 1024;
/// The buffer's first allocation: room for a push's responses to a few streams, so that it is
/// not grown (and copied) frame by frame. Any write it holds is smaller (`DIRECT_AT`).
const FIRST_ALLOCATION: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    /// Nothing put off.
    Idle,
    /// A flush was put off in this poll of the connection's task.
    Waiting,
    /// The task has been polled again since: the next flush that follows no write goes out.
    Due,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flush {
    /// Write the buffer to the socket and flush it.
    GoOut,
    /// Keep the bytes and wake the task, so that it comes back to flush.
    PutOff,
}

/// What a flush does, from the round, the bytes buffered, whether anything was written since
/// the last flush, and how many flushes this round has put off already.
fn on_flush(round: Round, buffered: usize, written: bool, put_offs: u32) -> (Round, Flush) {
    if buffered == 0 || buffered >= FLUSH_AT || put_offs >= MAX_PUT_OFFS {
        return (Round::Idle, Flush::GoOut);
    }
    match round {
        Round::Idle | Round::Waiting => (Round::Waiting, Flush::PutOff),
        // A write since the last flush: h2 is in the middle of handing frames over, or ended its
        // poll with a small frame; either way it flushes again (the wake makes sure of it).
        Round::Due if written => (Round::Due, Flush::PutOff),
        Round::Due => (Round::Idle, Flush::GoOut),
    }
}

fn on_read(round: Round) -> Round {
    match round {
        Round::Waiting => Round::Due,
        other => other,
    }
}

/// A connection whose writes are buffered and flushed once per push (see the module's doc).
pub struct BatchedWrites<T> {
    inner: T,
    buffer: Vec<u8>,
    /// How much of `buffer` the socket has taken.
    taken: usize,
    round: Round,
    written_since_flush: bool,
    put_offs: u32,
    /// Writes to the socket, for `causeway_xds_socket_writes`.
    socket_writes: Counter,
}

impl<T> BatchedWrites<T> {
    pub(crate) fn new(inner: T, socket_writes: Counter) -> BatchedWrites<T> {
        BatchedWrites {
            inner,
            buffer: Vec::new(),
            taken: 0,
            round: Round::Idle,
            written_since_flush: false,
            put_offs: 0,
            socket_writes,
        }
    }

    fn buffered(&self) -> usize {
        self.buffer.len() - self.taken
    }
}

impl<T: AsyncWrite + Unpin> BatchedWrites<T> {
    /// Writes the whole buffer to the socket, and frees it: a connection that is not being
    /// pushed to holds no buffer.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.taken < self.buffer.len() {
            let taken =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.taken..]))?;
            self.socket_writes.inc();
            if taken == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.taken += taken;
        }
        self.buffer = Vec::new();
        self.taken = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `length` bytes, written by `copy` into the buffer, or straight to the socket by
    /// `direct` when they are too many to be worth copying.
    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        length: usize,
        copy: impl FnOnce(&mut Vec<u8>),
        direct: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.buffered() + length > FLUSH_AT || length >= DIRECT_AT {
            ready!(self.poll_write_out(cx))?;
        }
        self.written_since_flush = true;
        if length >= DIRECT_AT {
            let taken = ready!(direct(Pin::new(&mut self.inner), cx))?;
            self.socket_writes.inc();
            return Poll::Ready(Ok(taken));
        }
        if self.buffer.capacity() == 0 {
            self.buffer.reserve(FIRST_ALLOCATION);
        }
        copy(&mut self.buffer);
        Poll::Ready(Ok(length))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for BatchedWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.round = on_read(this.round);
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_take(
            cx,
            buf.len(),
            |buffer| buffer.extend_from_slice(buf),
            |inner, cx| inner.poll_write(cx, buf),
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let length = bufs.iter().map(|buf| buf.len()).sum();
        self.get_mut().poll_take(
            cx,
            length,
            |buffer| {
                for buf in bufs {
                    buffer.extend_from_slice(buf);
                }
            },
            |inner, cx| inner.poll_write_vectored(cx, bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (round, flush) = on_flush(
            this.round,
            this.buffered(),
            this.written_since_flush,
            this.put_offs,
        );
        this.written_since_flush = false;
        match flush {
            Flush::PutOff => {
                this.round = round;
                this.put_offs += 1;
                cx.waker().wake_by_ref();
                Poll::Ready(Ok(()))
            }
            Flush::GoOut => {
                ready!(this.poll_write_out(cx))?;
                this.round = round;
                this.put_offs = 0;
                Pin::new(&mut this.inner).poll_flush(cx)
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for BatchedWrites<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    #[test]
    fn a_flush_goes_out_after_a_read_and_only_once_nothing_more_is_written() {
        use Flush::*;
        use Round::*;
        let small = 1000;
        // (round, buffered, written since the last flush, put-offs) -> (round, flush)
        let table = [
            ((Idle, 0, false, 0), (Idle, GoOut)),
            ((Idle, 0, true, 0), (Idle, GoOut)),
            ((Idle, small, true, 0), (Waiting, PutOff)),
            ((Waiting, small, true, 1), (Waiting, PutOff)),
            ((Waiting, small, false, 2), (Waiting, PutOff)),
            ((Due, small, true, 3), (Due, PutOff)),
            ((Due, small, false, 4), (Idle, GoOut)),
            ((Idle, FLUSH_AT, true, 0), (Idle, GoOut)),
            ((Waiting, FLUSH_AT + 1, true, 5), (Idle, GoOut)),
            ((Waiting, small, true, MAX_PUT_OFFS), (Idle, GoOut)),
        ];
        for ((round, buffered, written, put_offs), expected) in table {
            assert_eq!(
                on_flush(round, buffered, written, put_offs),
                expected,
                "{round:?} with {buffered} bytes buffered, written {written}, {put_offs} put off"
            );
        }
        assert_eq!(on_read(Idle), Idle);
        assert_eq!(on_read(Waiting), Due);
        assert_eq!(on_read(Due), Due);
    }

    /// A socket that counts the writes it takes, and takes at most `limit` bytes of each.
    #[derive(Default)]
    struct Socket {
        written: Vec<u8>,
        writes: usize,
        flushes: usize,
        limit: Option<usize>,
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let taken = buf.len().min(this.limit.unwrap_or(usize::MAX));
            this.written.extend_from_slice(&buf[..taken]);
            this.writes += 1;
            Poll::Ready(Ok(taken))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Socket {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drives the connection as h2's connection task does: each poll tries to read, then hands
    /// over the frames queued since, flushing after each one, and flushes once more at the end.
    struct Connection {
        io: BatchedWrites<Socket>,
        waker: Arc<CountingWaker>,
    }

    impl Connection {
        fn new(limit: Option<usize>) -> Connection {
            let socket = Socket {
                limit,
                ..Socket::default()
            };
            Connection {
                io: BatchedWrites::new(socket, Counter::default()),
                waker: Arc::default(),
            }
        }

        fn poll(&mut self, frames: &[&[u8]]) {
            let waker = std::task::Waker::from(self.waker.clone());
            let mut cx = Context::from_waker(&waker);
            let mut space = [0u8; 16];
            let mut read = ReadBuf::new(&mut space);
            assert!(
                Pin::new(&mut self.io)
                    .poll_read(&mut cx, &mut read)
                    .is_pending()
            );
            for frame in frames {
                // As h2 does: what a short write left is written next.
                let mut rest: &[u8] = frame;
                while !rest.is_empty() {
                    match Pin::new(&mut self.io).poll_write(&mut cx, rest) {
                        Poll::Ready(Ok(taken)) if taken > 0 => rest = &rest[taken..],
                        other => panic!("a write to a socket that takes everything: {other:?}"),
                    }
                }
                assert!(Pin::new(&mut self.io).poll_flush(&mut cx).is_ready());
            }
            assert!(Pin::new(&mut self.io).poll_flush(&mut cx).is_ready());
        }

        fn wakes(&self) -> usize {
            self.waker.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn frames_handed_over_across_two_polls_go_out_in_one_write() {
        let mut connection = Connection::new(None);
        let frame: &[u8] = &[7u8; 300];
        // The first stream's frame wakes the connection before the other streams have run.
        connection.poll(&[frame]);
        assert_eq!(connection.io.inner.writes, 0, "the first flush is put off");
        assert!(
            connection.wakes() >= 1,
            "putting a flush off wakes the task"
        );
        // The other nine streams' frames are queued by the time it runs again.
        connection.poll(&[frame; 9]);
        assert_eq!(connection.io.inner.writes, 1);
        assert_eq!(connection.io.inner.written.len(), 3000);
        assert_eq!(connection.io.buffer.capacity(), 0, "the buffer is freed");

        // Nothing more: a poll flushes nothing and does not wake the task again.
        let wakes = connection.wakes();
        connection.poll(&[]);
        assert_eq!(connection.io.inner.writes, 1);
        assert_eq!(connection.wakes(), wakes);
    }

    #[test]
    fn frames_queued_before_the_first_poll_go_out_on_the_next() {
        let mut connection = Connection::new(None);
        let frame: &[u8] = &[1u8; 500];
        connection.poll(&[frame; 10]);
        assert_eq!(connection.io.inner.writes, 0);
        connection.poll(&[]);
        assert_eq!(connection.io.inner.writes, 1);
        assert_eq!(connection.io.inner.written.len(), 5000);
        assert!(connection.io.inner.flushes >= 1);
    }

    #[test]
    fn a_large_response_goes_out_in_order_and_a_short_socket_write_loses_nothing() {
        let mut connection = Connection::new(Some(10_000));
        // Small frames (held) between large ones (written through): the order is kept.
        let frames: Vec<Vec<u8>> = (0..40u8)
            .map(|n| vec![n; if n % 3 == 0 { 700 } else { 16 * 1024 }])
            .collect();
        let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        connection.poll(&frames);
        connection.poll(&[]);
        let expected: Vec<u8> = frames.concat();
        assert_eq!(connection.io.inner.written, expected);
        assert!(
            connection.io.buffered() == 0,
            "everything is written once the round is over"
        );
    }

    #[test]
    fn a_write_too_large_to_copy_goes_straight_to_the_socket() {
        let mut connection = Connection::new(None);
        let large = vec![3u8; DIRECT_AT];
        connection.poll(&[&large]);
        assert_eq!(connection.io.inner.writes, 1);
        assert_eq!(connection.io.buffer.capacity(), 0, "nothing was copied");

        // Held bytes go first.
        let small = vec![4u8; 100];
        connection.poll(&[&small, &large]);
        assert_eq!(connection.io.inner.writes, 3);
        assert_eq!(
            connection.io.inner.written[DIRECT_AT..DIRECT_AT + 100],
            small[..]
        );
        assert_eq!(connection.io.buffer.capacity(), 0, "nothing left held");
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_buffered() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let mut io = BatchedWrites::new(ours, Counter::default());
        io.write_all(b"last words").await.unwrap();
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        let mut received = Vec::new();
        theirs.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"last words");
    }
}
