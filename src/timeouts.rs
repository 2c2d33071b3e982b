//! A connection's timers between requests: `--header-timeout` for a request
//! head to arrive and `--keep-alive` for an idle connection to be reused.
//!
//! hyper has one timer for both (a slow head and an idle connection look the
//! same from inside its parser), so they live here instead, in a wrapper
//! around the socket that only watches when bytes move and never touches
//! them. The service marks where a request starts and its response ends; the
//! body's own stall timeout stays with the body in `http`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What a connection does once it has answered a request.
#[derive(Clone, Copy, Debug)]
pub enum KeepAlive {
    /// Close it (`--keep-alive 0`, as in gunicorn).
    Off,
    /// Wait this long for the next request.
    Idle(Duration),
}

impl KeepAlive {
    pub fn is_on(self) -> bool {
        matches!(self, KeepAlive::Idle(_))
    }
}

/// Where a connection is, as far as its timers care.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Phase {
    /// Waiting for a request head, or part of one has arrived: `--header-timeout` runs.
    Head,
    /// A request is being handled; its body and the app have their own timeouts.
    Busy,
    /// The response body is done, but hyper may still hold bytes of it.
    Answered,
    /// Everything was written and nothing new has arrived: `--keep-alive` runs.
    Idle,
}

impl Phase {
    fn from_u8(n: u8) -> Phase {
        [Phase::Head, Phase::Busy, Phase::Answered, Phase::Idle][usize::from(n)]
    }
}

/// The phase, shared between the socket wrapper and the requests on it (both
/// are polled by the connection's one task; the atomic only makes it `Sync`).
struct Shared(AtomicU8);

impl Shared {
    fn get(&self) -> Phase {
        Phase::from_u8(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Relaxed);
    }

    fn advance(&self, from: Phase, to: Phase) -> bool {
        self.0.compare_exchange(from as u8, to as u8, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// Held from the moment a request head is parsed until hyper drops its
/// response body: while it lives, neither timer runs.
pub struct Busy(Arc<Shared>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.set(Phase::Answered);
    }
}

/// Hands out a `Busy` for each request on one connection.
pub struct Requests(Arc<Shared>);

impl Requests {
    pub fn busy(&self) -> Busy {
        self.0.set(Phase::Busy);
        Busy(self.0.clone())
    }
}

/// The socket of one connection, closed when a head is late or an idle spell
/// lasts too long.
pub struct Timed<I> {
    io: I,
    phase: Arc<Shared>,
    header_timeout: Duration,
    keep_alive: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<I> Timed<I> {
    /// The first head is due `header_timeout` after the connection opens.
    pub fn new(io: I, header_timeout: Duration, keep_alive: KeepAlive) -> (Timed<I>, Requests) {
        // Without keep-alive hyper closes after the response; no idle spell follows.
        let keep_alive = match keep_alive {
            KeepAlive::Idle(after) => after,
            KeepAlive::Off => Duration::ZERO,
        };
        let phase = Arc::new(Shared(AtomicU8::new(Phase::Head as u8)));
        let timer = Box::pin(tokio::time::sleep(header_timeout));
        (Timed { io, phase: phase.clone(), header_timeout, keep_alive, timer }, Requests(phase))
    }

    fn restart_timer(&mut self, after: Duration) {
        self.timer.as_mut().reset(Instant::now() + after);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Timed<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                // The first byte of the next request ends an idle spell; the
                // head it starts has `--header-timeout` from now.
                if this.phase.advance(Phase::Idle, Phase::Head) {
                    this.restart_timer(this.header_timeout);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.phase.get() {
                Phase::Head => {
                    ready!(this.timer.as_mut().poll(cx));
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request head did not arrive within --header-timeout",
                    )))
                }
                Phase::Idle => {
                    ready!(this.timer.as_mut().poll(cx));
                    // An end of stream between requests: hyper closes quietly.
                    Poll::Ready(Ok(()))
                }
                Phase::Busy | Phase::Answered => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Timed<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// hyper flushes the socket only once its own buffer is empty, so a flush
    /// after the response ended means the client has been sent all of it: a
    /// slow reader is never counted as idle.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        if this.phase.advance(Phase::Answered, Phase::Idle) {
            this.restart_timer(this.keep_alive);
            // hyper may have polled its read before this flush and will not
            // read again until the socket wakes it: the timer must wake it
            // too, at once if the keep-alive is already over.
            if this.timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! Real hyper over an in-memory pipe with a tiny buffer, on tokio's paused
    //! clock: every wait below is exact, and a slow reader is really slow.

    use std::convert::Infallible;

    use bytes::Bytes;
    use hyper::body::{Frame, SizeHint};
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    const KEEP_ALIVE: Duration = Duration::from_secs(2);
    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    /// A response body that holds the request's `Busy`, as `http::Body` does.
    struct Held {
        data: Option<Bytes>,
        _busy: Busy,
    }

    impl hyper::body::Body for Held {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.data.as_ref().map_or(0, |data| data.len() as u64))
        }
    }

    /// A client end of a connection whose server answers every request with
    /// `size` bytes.
    fn connect(size: usize) -> DuplexStream {
        let (client, server) = tokio::io::duplex(1024);
        let (io, requests) = Timed::new(server, HEADER_TIMEOUT, KeepAlive::Idle(KEEP_ALIVE));
        let service = service_fn(move |_: Request<hyper::body::Incoming>| {
            let body = Held { data: Some(Bytes::from(vec![b'x'; size])), _busy: requests.busy() };
            async move { Ok::<_, Infallible>(Response::new(body)) }
        });
        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service));
        client
    }

    /// Reads one response with a `size`-byte body, of which `got` already arrived.
    async fn finish_response(client: &mut DuplexStream, size: usize, mut got: Vec<u8>) {
        let mut buf = [0; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                assert!(got.len() <= end + 4 + size, "more than the response");
                if got.len() == end + 4 + size {
                    return;
                }
            }
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {} bytes of the response", got.len());
            got.extend_from_slice(&buf[..n]);
        }
    }

    async fn read_response(client: &mut DuplexStream, size: usize) {
        finish_response(client, size, Vec::new()).await
    }

    /// How long until the server closes the connection.
    async fn time_to_close(client: &mut DuplexStream) -> Duration {
        let started = Instant::now();
        let mut buf = [0; 64];
        let read = tokio::time::timeout(HEADER_TIMEOUT * 3, client.read(&mut buf)).await;
        assert_eq!(read.expect("the server never closed the connection").unwrap_or(0), 0, "the server sent more");
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_closes_after_keep_alive() {
        let mut client = connect(5);
        client.write_all(GET).await.unwrap();
        read_response(&mut client, 5).await;
        let idle = time_to_close(&mut client).await;
        assert!(idle >= KEEP_ALIVE && idle < KEEP_ALIVE + Duration::from_millis(50), "{idle:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_is_not_idle() {
        // 64 KiB cannot pass a 1 KiB pipe at once: hyper is done with the body
        // long before the client has it all.
        let size = 64 << 10;
        let mut client = connect(size);
        client.write_all(GET).await.unwrap();
        let mut first = [0; 100];
        client.read_exact(&mut first).await.unwrap();
        tokio::time::sleep(HEADER_TIMEOUT + KEEP_ALIVE).await;
        finish_response(&mut client, size, first.to_vec()).await;
        // Still a live keep-alive connection.
        client.write_all(GET).await.unwrap();
        read_response(&mut client, size).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_has_header_timeout_from_its_first_byte() {
        let mut client = connect(5);
        client.write_all(GET).await.unwrap();
        read_response(&mut client, 5).await;
        tokio::time::sleep(KEEP_ALIVE / 2).await;
        client.write_all(&GET[..10]).await.unwrap();
        // Longer than keep-alive, shorter than the header timeout: still served.
        tokio::time::sleep(KEEP_ALIVE * 2).await;
        client.write_all(&GET[10..]).await.unwrap();
        read_response(&mut client, 5).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_head_closes_the_connection() {
        let mut client = connect(5);
        client.write_all(&GET[..10]).await.unwrap();
        let waited = time_to_close(&mut client).await;
        assert!(waited >= HEADER_TIMEOUT && waited < HEADER_TIMEOUT + Duration::from_millis(50), "{waited:?}");
    }
}
