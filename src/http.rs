//! The HTTP front end: listeners, connections, and the translation of each
//! request into a pool `Job` and of the pool's `Event`s into a response.
//!
//! Knows hyper and the pool's API, never the pipe format. Every answer the
//! master gives on its own (400, 500, 502, 503) is made here.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::http::request::Parts;
use hyper::http::{header, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, UnixListener, UnixSocket};
use tokio::sync::watch;

use crate::cli::Bind;
use crate::environ::{self, Conn};
use crate::environ::{TrustedProxies, Underscores};
use crate::log::{self, Timestamp};
use crate::pool::{BodyError, BodySource, Event, Failure, Job, NextChunk, Pool, Ticket};
use crate::timeouts::{Busy, KeepAlive, Timed};
use crate::{debug, error, warning};

/// Connections the kernel may hold before the master accepts them (it caps
/// this at net.core.somaxconn). The master accepts as fast as it can, so the
/// queue only absorbs bursts; std's 128 dropped them, and each dropped SYN
/// costs its client a second. `--backlog` is the queue of requests instead.
const LISTEN_BACKLOG: u32 = 4096;

/// Request body that travels inside the request frame; more is pulled on demand.
const INLINE_BODY: usize = 64 << 10;

/// What the front end accepts (gunicorn's names and defaults).
#[derive(Clone, Debug)]
pub struct Limits {
    pub request_line: usize,
    pub fields: usize,
    pub field_size: usize,
    pub body: Option<u64>,
    /// For the request line and headers to arrive, from their first byte.
    pub header_timeout: Duration,
    pub keep_alive: KeepAlive,
    /// For each read of the body while the body is not complete.
    pub body_timeout: Duration,
}

/// Everything a connection needs.
pub struct Front {
    pub pool: Arc<Pool>,
    pub limits: Limits,
    pub underscores: Underscores,
    pub proxies: TrustedProxies,
}

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub fn bind(bind: &Bind) -> io::Result<Listener> {
        match bind {
            Bind::Tcp(addr) => {
                let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                socket.set_reuseaddr(true)?;
                socket.bind(*addr)?;
                Ok(Listener::Tcp(socket.listen(LISTEN_BACKLOG)?))
            }
            Bind::Unix(path) => {
                remove_stale_socket(path)?;
                let socket = UnixSocket::new_stream()?;
                socket.bind(path)?;
                Ok(Listener::Unix(socket.listen(LISTEN_BACKLOG)?, path.clone()))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(addr) => format!("http://{addr}"),
                Err(_) => "http://?".into(),
            },
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A socket file left by an earlier run is replaced, as gunicorn does; any
/// other file at that path is an error.
fn remove_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(io::ErrorKind::AlreadyExists, "a file that is not a socket is in the way")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Serves every listener until `shutdown` resolves to the deadline by which
/// requests in progress must finish, waits until then for them, and returns it.
pub async fn serve(listeners: Vec<Listener>, front: Arc<Front>, shutdown: impl Future<Output = Instant>) -> Instant {
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        accepting.spawn(accept_loop(listener, front.clone(), graceful.clone(), stop_rx.clone()));
    }
    let deadline = shutdown.await;
    let _ = stop_tx.send(true);
    while accepting.join_next().await.is_some() {}
    let graceful = Arc::into_inner(graceful).expect("the accept loops have ended");
    if tokio::time::timeout_at(deadline.into(), graceful.shutdown()).await.is_err() {
        warning!("Requests still in progress at the end of the graceful timeout are cut");
    }
    deadline
}

async fn accept_loop(
    listener: Listener,
    front: Arc<Front>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|&s| s) => return,
            accepted = accept(&listener, &front.proxies) => accepted,
        };
        match accepted {
            Ok((io, conn)) => {
                debug!("Accepted a connection from {}", Peer(conn.peer));
                serve_connection(io, conn, front.clone(), &graceful)
            }
            Err(e) => {
                // Out of fds or memory: back off instead of spinning.
                warning!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A client as the error log names it.
struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("a unix socket"),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

async fn accept(listener: &Listener, proxies: &TrustedProxies) -> io::Result<(Box<dyn Io>, Conn)> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, peer) = l.accept().await?;
            stream.set_nodelay(true)?;
            let trusted = proxies.trusts(Some(peer));
            let conn = Conn { peer: Some(peer), local: stream.local_addr().ok(), scheme: "http", trusted };
            Ok((Box::new(stream), conn))
        }
        Listener::Unix(l, _) => {
            let (stream, _) = l.accept().await?;
            Ok((Box::new(stream), Conn { peer: None, local: None, scheme: "http", trusted: proxies.trusts(None) }))
        }
    }
}

fn serve_connection(io: Box<dyn Io>, conn: Conn, front: Arc<Front>, graceful: &GracefulShutdown) {
    let conn = Arc::new(conn);
    let mut builder = http1::Builder::new();
    builder.keep_alive(front.limits.keep_alive.is_on()).max_headers(front.limits.fields).title_case_headers(true);
    let peer = Peer(conn.peer);
    let (io, requests) = Timed::new(io, front.limits.header_timeout, front.limits.keep_alive);
    let service = service_fn(move |req| {
        let busy = requests.busy();
        let handled = handle(req, conn.clone(), front.clone());
        async move {
            let mut response = handled.await;
            response.body_mut().busy = Some(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
    tokio::spawn(async move {
        match connection.await {
            // hyper has answered 400, 414 or 431 itself; log it as our own refusals are.
            Err(e) if e.is_parse() => warning!("Refused a request from {peer} that did not parse: {e}"),
            Err(e) => debug!("connection from {peer} ended: {e}"),
            Ok(()) => {}
        }
    });
}

async fn handle(req: Request<Incoming>, conn: Arc<Conn>, front: Arc<Front>) -> Response<Body> {
    let exchange = Exchange::new(&req, &conn);
    let (parts, body) = req.into_parts();
    if let Err((status, reason)) = screen(&parts, &front.limits) {
        return exchange.refuse(status, &reason);
    }
    let environ = match environ::build(&parts, &conn, front.underscores) {
        Ok(environ) => environ,
        Err(e) => return exchange.refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let expects_continue =
        parts.headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let body =
        ClientBody { body, received: 0, limit: front.limits.body, stall: front.limits.body_timeout, ended: false };
    let (body, rest) = match read_initial_body(body, expects_continue).await {
        Ok(read) => read,
        Err(e) => return exchange.refuse_body(e),
    };
    let mut ticket = match front.pool.submit(Job { environ, body, rest }) {
        Ok(ticket) => ticket,
        Err(e) => return exchange.reply(StatusCode::SERVICE_UNAVAILABLE, &format!("Service Unavailable: {e}.\n")),
    };
    match ticket.recv().await {
        Some(Event::Head { status, headers }) => match head(&status, headers) {
            Ok(head) => exchange.stream(head, ticket),
            Err(e) => {
                error!("{}: the app's response is invalid: {e}", exchange.request_line());
                exchange.reply(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
            }
        },
        Some(Event::Failed(failure)) => {
            exchange.log_failure(&failure);
            let (status, text) = match failure {
                Failure::App { .. } | Failure::MalformedHeaders => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
                }
                Failure::Timeout => (StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout: the app did not answer in time.\n"),
                Failure::QueueTimeout => {
                    (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable: no worker was free in time.\n")
                }
            };
            exchange.reply(status, text)
        }
        Some(Event::BodyFailed(e)) => exchange.refuse_body(e),
        Some(Event::Chunk(_) | Event::End) | None => {
            error!("{}: the worker was lost before it answered", exchange.request_line());
            exchange.reply(StatusCode::BAD_GATEWAY, "Bad Gateway: the worker handling this request died.\n")
        }
    }
}

/// The checks hyper leaves to us, each answered with the status gunicorn
/// gives (docs/accepts.md): limits, and framing a proxy in front could read
/// differently (request smuggling).
fn screen(parts: &Parts, limits: &Limits) -> Result<(), (StatusCode, String)> {
    let bad = |reason: &str| Err((StatusCode::BAD_REQUEST, reason.to_string()));
    let target = match (parts.uri.scheme(), parts.uri.path_and_query()) {
        (None, Some(origin_form)) => origin_form.as_str().len(),
        _ => parts.uri.to_string().len(),
    };
    // "METHOD SP target SP HTTP/1.1"
    if parts.method.as_str().len() + target + 10 > limits.request_line {
        let reason = format!("the request line is longer than {} bytes", limits.request_line);
        return Err((StatusCode::URI_TOO_LONG, reason));
    }
    if let Some((name, _)) = parts.headers.iter().find(|(n, v)| n.as_str().len() + v.len() + 2 > limits.field_size) {
        let reason = format!("the {name} header is longer than {} bytes", limits.field_size);
        return Err((StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, reason));
    }
    let codings =
        parts.headers.get_all(header::TRANSFER_ENCODING).iter().flat_map(|v| v.as_bytes().split(|&b| b == b','));
    let chunked = codings.filter(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked")).count();
    if parts.headers.contains_key(header::TRANSFER_ENCODING) && parts.headers.contains_key(header::CONTENT_LENGTH) {
        return bad("Content-Length and Transfer-Encoding together");
    }
    if chunked > 1 {
        return bad("chunked is applied twice");
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return bad("more than one Host header");
    }
    if parts.version == Version::HTTP_11 && host.is_none() {
        return bad("an HTTP/1.1 request without a Host header");
    }
    if let (Some(authority), Some(host)) = (parts.uri.authority(), host) {
        if !authority.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes()) {
            return bad("the target's host differs from the Host header");
        }
    }
    let length = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let (Some(length), Some(limit)) = (length, limits.body) {
        if length > limit {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {limit} bytes")));
        }
    }
    Ok(())
}

/// The body as the client sends it, counted against --limit-request-body.
struct ClientBody {
    body: Incoming,
    received: u64,
    limit: Option<u64>,
    stall: Duration,
    ended: bool,
}

impl ClientBody {
    fn is_end(&self) -> bool {
        self.ended || hyper::body::Body::is_end_stream(&self.body)
    }

    async fn next(&mut self) -> Option<Result<Bytes, BodyError>> {
        loop {
            let Ok(frame) = tokio::time::timeout(self.stall, self.body.frame()).await else {
                return Some(Err(BodyError::Stalled));
            };
            let frame = match frame {
                None => {
                    self.ended = true;
                    return None;
                }
                Some(frame) => frame,
            };
            let Ok(frame) = frame else { return Some(Err(BodyError::Client)) };
            // Trailers are dropped: no trailer field ever reaches the environ.
            let Ok(data) = frame.into_data() else { continue };
            self.received += data.len() as u64;
            if self.limit.is_some_and(|limit| self.received > limit) {
                return Some(Err(BodyError::TooLarge));
            }
            if !data.is_empty() {
                return Some(Ok(data));
            }
        }
    }
}

impl BodySource for ClientBody {
    fn next_chunk(&mut self) -> NextChunk<'_> {
        Box::pin(self.next())
    }
}

/// Reads up to `INLINE_BODY` of the body, so a small body (even from a slow
/// client) is complete before a worker is involved; the rest is pulled as the
/// app reads. With `Expect: 100-continue` nothing is read before the app
/// reads, so the client is told to go on only then.
async fn read_initial_body(
    mut body: ClientBody,
    expects_continue: bool,
) -> Result<(Bytes, Option<Box<dyn BodySource>>), BodyError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut size = 0;
    while !expects_continue && !body.is_end() && size < INLINE_BODY {
        match body.next().await.transpose()? {
            Some(data) => {
                size += data.len();
                chunks.push(data);
            }
            None => break,
        }
    }
    let initial = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => chunks.concat().into(),
    };
    let rest: Option<Box<dyn BodySource>> = if body.is_end() { None } else { Some(Box::new(body)) };
    Ok((initial, rest))
}

/// Headers that belong to one connection, which the server alone manages (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The app's status line and headers, validated into a response head.
fn head(status: &[u8], headers: Vec<(Bytes, Bytes)>) -> Result<Response<()>, String> {
    let invalid_status =
        || format!("status {:?} is not a three-digit code and a reason", String::from_utf8_lossy(status));
    if status.len() < 3 || (status.len() > 3 && status[3] != b' ') {
        return Err(invalid_status());
    }
    let code = StatusCode::from_bytes(&status[..3]).map_err(|_| invalid_status())?;
    let mut response = Response::new(());
    *response.status_mut() = code;
    let reason = status.get(4..).unwrap_or_default();
    if !reason.is_empty() && Some(reason) != code.canonical_reason().map(str::as_bytes) {
        let phrase = hyper::ext::ReasonPhrase::try_from(reason).map_err(|_| invalid_status())?;
        response.extensions_mut().insert(phrase);
    }
    let map = response.headers_mut();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(&name)
            .map_err(|_| format!("header name {:?} is invalid", String::from_utf8_lossy(&name)))?;
        if HOP_BY_HOP.contains(&name) {
            return Err(format!("{name} is a hop-by-hop header, which PEP 3333 forbids apps to send"));
        }
        let value =
            HeaderValue::from_maybe_shared(value).map_err(|_| format!("the value of header {name} is invalid"))?;
        if name == header::CONTENT_LENGTH && value.to_str().ok().and_then(|v| v.parse::<u64>().ok()).is_none() {
            return Err(format!("Content-Length {value:?} is not a number"));
        }
        map.append(name, value);
    }
    Ok(response)
}

/// One request/response exchange: what the error and access logs say about it.
struct Exchange {
    method: Method,
    uri: Uri,
    version: Version,
    peer: Option<SocketAddr>,
    received: SystemTime,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
}

impl Exchange {
    fn new(req: &Request<Incoming>, conn: &Conn) -> Self {
        let header = |name| req.headers().get(name).cloned();
        Exchange {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            peer: conn.peer,
            received: SystemTime::now(),
            referer: header(header::REFERER),
            user_agent: header(header::USER_AGENT),
        }
    }

    fn request_line(&self) -> String {
        format!("{} {} {:?}", self.method, self.uri, self.version)
    }

    fn log_failure(&self, failure: &Failure) {
        match failure {
            Failure::App { traceback } => {
                error!("Error handling request {}:\n{}", self.request_line(), traceback.trim_end())
            }
            Failure::MalformedHeaders => {
                error!("{}: the app sent a header list that is not name/value pairs", self.request_line())
            }
            Failure::Timeout => error!("{}: the worker was killed after the timeout", self.request_line()),
            Failure::QueueTimeout => {
                warning!("{}: no worker was free within --queue-timeout; answered 503", self.request_line())
            }
        }
    }

    /// A request refused before any worker saw it: the connection is closed
    /// after the answer, since what follows on it cannot be trusted.
    fn refuse(self, status: StatusCode, reason: &str) -> Response<Body> {
        warning!("Refused {} with {}: {reason}", self.request_line(), status.as_u16());
        let text = format!("{}: {reason}.\n", status.canonical_reason().unwrap_or("Refused"));
        let mut response = self.reply(status, &text);
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }

    /// The client's body failed before the app answered.
    fn refuse_body(self, e: BodyError) -> Response<Body> {
        let status = match e {
            BodyError::Client => StatusCode::BAD_REQUEST,
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Stalled => StatusCode::REQUEST_TIMEOUT,
        };
        self.refuse(status, &e.to_string())
    }

    /// An answer the master makes itself.
    fn reply(self, status: StatusCode, text: &str) -> Response<Body> {
        let body = Body {
            source: Source::Full(Some(Bytes::copy_from_slice(text.as_bytes()))),
            busy: None,
            declared: None,
            log: AccessLog::new(self, status),
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        response
    }

    fn stream(self, head: Response<()>, ticket: Ticket) -> Response<Body> {
        let (parts, ()) = head.into_parts();
        let bodiless = self.method == Method::HEAD
            || parts.status.is_informational()
            || matches!(parts.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
        let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        let log = AccessLog::new(self, parts.status);
        let declared = if bodiless { None } else { declared };
        Response::from_parts(parts, Body { source: Source::Events(ticket), busy: None, declared, log })
    }
}

/// A response body: the master's own text, or the worker's chunks as they come.
pub struct Body {
    source: Source,
    /// Keeps the connection's timers off until hyper is done with this response.
    busy: Option<Busy>,
    /// The app's Content-Length, which the body must match exactly.
    declared: Option<u64>,
    log: AccessLog,
}

enum Source {
    Full(Option<Bytes>),
    Events(Ticket),
    /// The response failed after its head. hyper drops its unflushed output
    /// with the connection when a body fails, so `Cutting` first yields once
    /// (hyper flushes what the client is owed), then `Cut` fails the body.
    Cutting,
    Cut,
}

/// The worker failed after the status line was sent: the connection is cut,
/// since no status can tell the client any more.
#[derive(Debug, thiserror::Error)]
#[error("the response was cut short")]
pub struct Cut;

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let this = &mut *self;
        let chunk = match &mut this.source {
            Source::Full(data) => data.take(),
            Source::Cut => return Poll::Ready(Some(Err(Cut))),
            Source::Cutting => {
                this.source = Source::Cut;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Source::Events(ticket) => match ready!(ticket.poll_recv(cx)) {
                Some(Event::Chunk(chunk)) => Some(chunk),
                Some(Event::End) if this.declared.is_some_and(|d| this.log.bytes < d) => {
                    this.log.cut("the app sent less body than its Content-Length");
                    this.source = Source::Cutting;
                    return self.poll_frame(cx);
                }
                Some(Event::End) => {
                    this.source = Source::Full(None);
                    None
                }
                failed => {
                    match (failed, &this.log.exchange) {
                        (Some(Event::Failed(failure)), Some(exchange)) => exchange.log_failure(&failure),
                        (Some(Event::BodyFailed(e)), Some(exchange)) => {
                            warning!("{}: {e}; cutting the connection", exchange.request_line())
                        }
                        _ => this.log.cut("the worker was lost in the middle of the response"),
                    }
                    this.source = Source::Cutting;
                    return self.poll_frame(cx);
                }
            },
        };
        if let (Some(data), Some(declared)) = (&chunk, this.declared) {
            // Sending only the declared part would let hyper finish the message
            // and keep the connection as if nothing were wrong.
            if this.log.bytes + data.len() as u64 > declared {
                this.log.cut("the app sent more body than its Content-Length");
                this.source = Source::Cutting;
                return self.poll_frame(cx);
            }
        }
        if let Some(chunk) = &chunk {
            this.log.bytes += chunk.len() as u64;
        }
        Poll::Ready(chunk.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.source, Source::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Source::Events(_) | Source::Cutting | Source::Cut => SizeHint::default(),
        }
    }
}

/// Writes the access log line when the response is over, however it ended.
struct AccessLog {
    exchange: Option<Exchange>,
    status: StatusCode,
    bytes: u64,
}

impl AccessLog {
    fn new(exchange: Exchange, status: StatusCode) -> Self {
        AccessLog { exchange: Some(exchange), status, bytes: 0 }
    }

    fn cut(&self, why: &str) {
        let request = self.exchange.as_ref().map_or_else(String::new, Exchange::request_line);
        error!("{request}: {why}; cutting the connection");
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let Some(x) = self.exchange.take() else { return };
        if !log::access_enabled() {
            return;
        }
        let quoted = |v: &Option<HeaderValue>| {
            v.as_ref().map_or_else(|| "-".to_string(), |v| String::from_utf8_lossy(v.as_bytes()).replace('"', "\\\""))
        };
        let host = x.peer.map_or_else(|| "-".to_string(), |p| p.ip().to_canonical().to_string());
        let time = Timestamp::from(x.received).clf();
        let size = if self.bytes == 0 { "-".to_string() } else { self.bytes.to_string() };
        log::access(&format!(
            "{host} - - [{time}] \"{} {} {:?}\" {} {size} \"{}\" \"{}\"\n",
            x.method,
            x.uri,
            x.version,
            self.status.as_u16(),
            quoted(&x.referer),
            quoted(&x.user_agent)
        ));
    }
}
