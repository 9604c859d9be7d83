//! Server connections that send each HTTP/2 burst in one write.
//!
//! h2 sends a DATA frame of 256 bytes or more straight from the message
//! (a vectored write) and must flush it before it takes the next frame, so
//! every unary answer of any size costs two writes: HEADERS and DATA, then
//! the trailers. Each write is a packet the kernel carries through both TCP
//! stacks, and waking the peer: measured on the split deployment, 2.6
//! writes per home read in the timeline and most of its CPU in `writev`.
//!
//! [`Batched`] copies what h2 writes into its own buffer. When h2 flushes,
//! the connection task is let run once more first (it wakes itself and
//! answers Pending): h2 then adds the trailers, and any answer that finished
//! meanwhile, and the next flush sends them all in one write. A buffer past
//! [`SEND_AT`] goes out at once. The cost is a copy of each answer and one
//! more poll of the connection task per burst.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write goes out without waiting for the next poll.
pub const SEND_AT: usize = 64 * 1024;

/// A connection whose writes are batched (see the module docs).
#[derive(Debug)]
pub struct Batched<T> {
    io: T,
    buf: Vec<u8>,
    /// How much of `buf` is already written.
    sent: usize,
    /// A flush already let the task run once since `buf` was last empty.
    yielded: bool,
}

impl<T> Batched<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        Self {
            io,
            buf: Vec::new(),
            sent: 0,
            yielded: false,
        }
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncWrite + Unpin> Batched<T> {
    /// Writes out everything held.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        self.yielded = false;
        Poll::Ready(Ok(()))
    }

    /// Room for more: a full buffer is written out first.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.len() >= SEND_AT {
            ready!(self.poll_send(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Batched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Batched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_room(cx))?;
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_room(cx))?;
        let mut n = 0;
        for b in bufs {
            self.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.sent < self.buf.len() {
            if !self.yielded && self.buf.len() < SEND_AT {
                // Let the connection task add what is about to follow.
                self.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(self.poll_send(cx))?;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Batched<tokio::net::TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Records each write it is given.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        shut: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            self.writes.push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn what_is_written_around_one_flush_goes_out_in_one_write() {
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut io = Batched::new(Recorder::default());
        let mut pinned = Pin::new(&mut io);
        // As h2 answers: HEADERS and a large DATA frame, a flush...
        assert!(pinned.as_mut().poll_write(&mut cx, b"headers+").is_ready());
        let data = [io::IoSlice::new(b"data-head+"), io::IoSlice::new(b"payload+")];
        assert!(pinned.as_mut().poll_write_vectored(&mut cx, &data).is_ready());
        assert!(
            pinned.as_mut().poll_flush(&mut cx).is_pending(),
            "the first flush lets the task run once more"
        );
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "and wakes it for that");
        assert!(pinned.get_ref().writes.is_empty());
        // ...then, polled again, the trailers and a flush.
        assert!(pinned.as_mut().poll_write(&mut cx, b"trailers").is_ready());
        assert!(matches!(pinned.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(
            pinned.get_ref().writes,
            vec![b"headers+data-head+payload+trailers".to_vec()]
        );
        // A flush with nothing held is done at once.
        assert!(matches!(pinned.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_buffer_goes_out_without_waiting_and_shutdown_sends_the_rest() {
        let waker = std::task::Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        let mut io = Batched::new(Recorder::default());
        let mut pinned = Pin::new(&mut io);
        let big = vec![7u8; SEND_AT];
        assert!(pinned.as_mut().poll_write(&mut cx, &big).is_ready());
        assert!(
            matches!(pinned.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))),
            "no yield past SEND_AT"
        );
        assert_eq!(pinned.get_ref().writes.len(), 1);
        assert!(pinned.as_mut().poll_write(&mut cx, &big).is_ready());
        assert!(
            pinned.as_mut().poll_write(&mut cx, b"x").is_ready(),
            "a full buffer is sent before more is taken"
        );
        assert_eq!(pinned.get_ref().writes.len(), 2);
        assert!(matches!(pinned.as_mut().poll_shutdown(&mut cx), Poll::Ready(Ok(()))));
        let rec = pinned.get_ref();
        assert_eq!(rec.writes.last().map(Vec::as_slice), Some(&b"x"[..]));
        assert!(rec.shut);
    }

    #[tokio::test]
    async fn bytes_arrive_whole_and_in_order_across_a_small_pipe() {
        // A pipe far smaller than what is written: every write waits on the reader.
        let (a, mut b) = tokio::io::duplex(1024);
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expect = sent.clone();
        let writer = tokio::spawn(async move {
            let mut w = Batched::new(a);
            for chunk in sent.chunks(7_001) {
                w.write_all(chunk).await.expect("write");
                w.flush().await.expect("flush");
            }
            w.shutdown().await.expect("shutdown");
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        writer.await.expect("writer");
        assert_eq!(got, expect);
    }
}
