//! The accept loop and the HTTP/1.1 connections of warm mode, with the limits
//! that keep slow or numerous clients from holding the server (`ConnLimits`).
//!
//! What each limit stops:
//! - `MAX_CONNECTIONS`: a semaphore taken before `accept`. At the limit the
//!   server stops accepting, so further clients wait in the kernel's listen
//!   backlog instead of costing a task, buffers and a file descriptor each.
//! - `HEADER_READ_TIMEOUT_MS`: a request line and headers must be complete
//!   this long after the connection opened, or after the first byte of a
//!   later request on it (slowloris: headers sent a byte at a time); and a
//!   request body being read may not pause longer than that (a body read holds
//!   a place among the running and queued invocations).
//! - `IDLE_TIMEOUT_MS`: a connection with no request in flight and no traffic
//!   for this long is closed, and so is one whose client has stopped reading
//!   its answer for this long (a write blocked that long).
//! - `MAX_HEADER_BYTES`: hyper answers 431 to a larger head, and its read
//!   buffer never grows past this (or 8 KiB, hyper's minimum) while a head is
//!   incomplete. hyper's own cap of 100 headers stays.
//!
//! Why the timers are ours and not hyper's `header_read_timeout`: hyper runs
//! that timer whenever it waits for a request head, including the idle time
//! between two requests on a keep-alive connection, so it cannot tell a slow
//! head from a pooled connection waiting for its next request. A control
//! plane's connection pool should live for `IDLE_TIMEOUT_MS` (a minute) while
//! a slow head gets `HEADER_READ_TIMEOUT_MS` (ten seconds). The bookkeeping is
//! a few relaxed atomics per read, write and request, and one timer per
//! connection that fires only when a limit could have been reached.
//!
//! Otherwise a request in flight (from its complete head until its answer's
//! last byte is handed to the socket) is bounded by the invocation's deadline,
//! not here: a function may legitimately run for `TIMEOUT_MS` with the
//! connection silent.
//!
//! Only HTTP/1.1 is served (no h2c): control planes call `/invoke` over
//! HTTP/1.1, and a protocol nobody uses is attack surface.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;
use tower::Service;

use super::signal::Signal;
pub use crate::config::ConnLimits;
use crate::memory::Trimmer;

/// What a connection serves: the router, or [`super::App`] in front of it.
pub trait App:
    Service<
        hyper::Request<Body>,
        Response = axum::response::Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> App for S where
    S: Service<
            hyper::Request<Body>,
            Response = axum::response::Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// hyper refuses a read buffer smaller than this.
const MIN_BUF: usize = 8192;

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting,
/// lets every connection finish the request it is on, and returns once all
/// are closed.
pub async fn serve<S: App>(
    listener: TcpListener,
    app: S,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(());
    let connections = TaskTracker::new();
    let mut http = http1::Builder::new();
    http.keep_alive(true)
        // Our timers, see the module comment; without a timer hyper has none.
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(MIN_BUF));
    let http = Arc::new(http);

    // Connections that close may leave their buffers in the allocator's arenas.
    let trimmer = Trimmer::spawn();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut full_since: Option<Instant> = None;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if full_since.is_none() {
                    tracing::warn!(
                        "MAX_CONNECTIONS={} reached: new connections wait until one closes",
                        limits.max_connections
                    );
                    full_since = Some(Instant::now());
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("never closed"),
                    _ = &mut shutdown => break,
                }
            }
        };
        if let Some(since) = full_since.take() {
            tracing::info!(
                waited_ms = since.elapsed().as_millis() as u64,
                "accepting connections again"
            );
        }
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let conn = Connection {
            tcp,
            app: app.clone(),
            http: http.clone(),
            limits,
            stop: stop_rx.clone(),
        };
        let trimmer = trimmer.clone();
        connections.spawn(async move {
            conn.run().await;
            drop(permit);
            trimmer.request();
        });
    }

    drop(listener);
    connections.close();
    // Each connection finishes the request it is on, then closes.
    let _ = stop_tx.send(());
    connections.wait().await;
}

/// Out of file descriptors or memory: the error repeats until something is
/// released, so wait a little instead of spinning. Anything else concerns one
/// connection that is already gone.
async fn accept_failed(e: io::Error) {
    use nix::errno::Errno;
    let resource = e.raw_os_error().is_some_and(|n| {
        [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM].contains(&Errno::from_raw(n))
    });
    if resource {
        tracing::error!(
            "accept failed: {e}; retrying in 100 ms (raise the open-file limit or lower MAX_CONNECTIONS)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        tracing::debug!("accept failed: {e}");
    }
}

struct Connection<S> {
    tcp: TcpStream,
    app: S,
    http: Arc<http1::Builder>,
    limits: ConnLimits,
    stop: watch::Receiver<()>,
}

impl<S: App> Connection<S> {
    async fn run(self) {
        let Connection {
            tcp,
            app,
            http,
            limits,
            mut stop,
        } = self;
        let clock = Arc::new(Clock::new());
        // Until its first byte a connection is a socket and this task, not yet
        // hyper's buffers (8 KiB and more each): idle connections cost little, and
        // one that closes without a byte never reaches hyper. The first head is
        // still due `HEADER_READ_TIMEOUT_MS` after the accept.
        let mut byte = [0u8; 1];
        tokio::select! {
            first = tokio::time::timeout(limits.header_read_timeout, tcp.peek(&mut byte)) => {
                match first {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) => return tracing::debug!("connection failed before a request: {e}"),
                    Err(_) => return tracing::debug!("connection closed: no request (HEADER_READ_TIMEOUT_MS)"),
                }
            }
            _ = stop.changed() => return,
        }
        let io = TokioIo::new(Watched {
            inner: tcp,
            clock: clock.clone(),
        });
        let service = TowerToHyperService::new(Tracked {
            inner: app,
            clock: clock.clone(),
        });
        let conn = http.serve_connection(io, service);
        let mut conn = std::pin::pin!(conn);
        let first = limits.header_read_timeout.min(limits.idle_timeout);
        let mut check = std::pin::pin!(tokio::time::sleep(first));
        let probe = stop.clone();
        let mut stopped = std::pin::pin!(Signal::new(stop.changed(), move || {
            probe.has_changed().unwrap_or(true)
        }));
        let mut stopping = false;
        // One task polls the connection and its timer, so that right after the
        // connection moved a limit closer (a head began, an answer ended, a write
        // blocked), the timer is brought forward in the same poll, without a wake-up.
        let outcome = std::future::poll_fn(|cx| {
            if !stopping && stopped.as_mut().poll(cx).is_ready() {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(|e| e.to_string()));
            }
            if clock.rearm.swap(false, Ordering::Relaxed) {
                match clock.verdict(now_ms(), &limits) {
                    Verdict::Wait(until) => {
                        let until = tokio::time::Instant::from_std(instant_of(until));
                        if until < check.deadline() {
                            check.as_mut().reset(until);
                        }
                    }
                    Verdict::Close(why) => return Poll::Ready(Err(why.to_owned())),
                }
            }
            while check.as_mut().poll(cx).is_ready() {
                match clock.verdict(now_ms(), &limits) {
                    Verdict::Wait(until) => check.as_mut().reset(instant_of(until).into()),
                    Verdict::Close(why) => return Poll::Ready(Err(why.to_owned())),
                }
            }
            Poll::Pending
        })
        .await;
        // Returning drops the connection, which closes the socket.
        if let Err(why) = outcome {
            tracing::debug!("connection closed: {why}");
        }
    }
}

/// Milliseconds since the first call, plus one, so that 0 can mean "never".
/// Read on every socket read and write, so from the coarse monotonic clock
/// (a few ns, a resolution of a tick: plenty for limits counted in seconds).
fn now_ms() -> u64 {
    coarse_ms().saturating_sub(base().coarse) + 1
}

/// The `Instant` by which `now_ms()` has reached `ms`, for the connection's
/// timer: one tick late rather than early, so the timer never wakes to find
/// the coarse clock still short of its deadline.
fn instant_of(ms: u64) -> Instant {
    let b = base();
    b.instant + Duration::from_millis(ms.saturating_sub(1)) + b.tick
}

struct Base {
    /// One moment on both clocks.
    instant: Instant,
    coarse: u64,
    /// The coarse clock's resolution (a kernel tick, 1 to 10 ms).
    tick: Duration,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut res = zero_timespec();
        // SAFETY: writes the resolution into `res`.
        unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
        let tick = Duration::new(res.tv_sec as u64, res.tv_nsec as u32);
        Base {
            instant: Instant::now(),
            coarse: coarse_ms(),
            tick: tick.max(Duration::from_millis(1)),
        }
    })
}

fn zero_timespec() -> libc::timespec {
    libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    }
}

fn coarse_ms() -> u64 {
    let mut ts = zero_timespec();
    // SAFETY: writes the current time into `ts`; CLOCK_MONOTONIC_COARSE exists
    // on every Linux since 2.6.32.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// What one connection has been doing, written by its socket (`Watched`) and
/// its service (`Tracked`), read by its timer. Times are `now_ms()`; 0 is unset.
#[derive(Debug)]
struct Clock {
    /// Requests from complete head to the answer's last byte.
    in_flight: AtomicUsize,
    /// When the head being read began: the connection's start, or the first
    /// byte that came with no request in flight.
    head_since: AtomicU64,
    /// The last byte read or written, or the last answer finished.
    last_activity: AtomicU64,
    /// Since when a write has been waiting for the client to read.
    write_blocked_since: AtomicU64,
    /// Since when the server has been waiting for more of a request body that
    /// it is reading.
    body_waits_since: AtomicU64,
    /// Set when a limit may have come closer than the timer: the connection's
    /// task then looks again before it sleeps.
    rearm: AtomicBool,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing to do before this time.
    Wait(u64),
    Close(&'static str),
}

impl Clock {
    fn new() -> Self {
        let now = now_ms();
        Clock {
            in_flight: AtomicUsize::new(0),
            head_since: AtomicU64::new(now),
            last_activity: AtomicU64::new(now),
            write_blocked_since: AtomicU64::new(0),
            body_waits_since: AtomicU64::new(0),
            rearm: AtomicBool::new(false),
        }
    }

    fn read(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = now_ms();
        self.last_activity.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(now, Ordering::Relaxed);
            self.rearm.store(true, Ordering::Relaxed);
        }
    }

    fn wrote(&self, ready: bool) {
        if ready {
            if self.write_blocked_since.load(Ordering::Relaxed) != 0 {
                self.write_blocked_since.store(0, Ordering::Relaxed);
            }
            self.last_activity.store(now_ms(), Ordering::Relaxed);
        } else if self.write_blocked_since.load(Ordering::Relaxed) == 0 {
            self.write_blocked_since.store(now_ms(), Ordering::Relaxed);
            self.rearm.store(true, Ordering::Relaxed);
        }
    }

    /// A read of the request body found nothing yet (`pending`) or something.
    fn body_waits(&self, pending: bool) {
        let since = self.body_waits_since.load(Ordering::Relaxed);
        if !pending {
            if since != 0 {
                self.body_waits_since.store(0, Ordering::Relaxed);
            }
        } else if since == 0 {
            self.body_waits_since.store(now_ms(), Ordering::Relaxed);
            self.rearm.store(true, Ordering::Relaxed);
        }
    }

    /// A head is complete: the request is in flight until its answer is sent.
    fn request(&self) {
        self.head_since.store(0, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    fn answered(&self) {
        self.body_waits_since.store(0, Ordering::Relaxed);
        self.last_activity.store(now_ms(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.rearm.store(true, Ordering::Relaxed);
    }

    fn verdict(&self, now: u64, limits: &ConnLimits) -> Verdict {
        let ms = |d: Duration| d.as_millis() as u64;
        let (header, idle) = (ms(limits.header_read_timeout), ms(limits.idle_timeout));
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked != 0 && now >= blocked + idle {
            return Verdict::Close("the client stopped reading (IDLE_TIMEOUT_MS)");
        }
        // Checked again after `idle` at the latest, for a write that blocks.
        let next_blocked = if blocked != 0 {
            blocked + idle
        } else {
            now + idle
        };
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // A body the server reads may pause no longer than a head may take:
            // while it is read it holds a place among the running and queued.
            let body = self.body_waits_since.load(Ordering::Relaxed);
            if body != 0 {
                if now >= body + header {
                    return Verdict::Close("request body stalled (HEADER_READ_TIMEOUT_MS)");
                }
                return Verdict::Wait((body + header).min(next_blocked));
            }
            return Verdict::Wait(next_blocked);
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 {
            if now >= head + header {
                return Verdict::Close("request headers incomplete (HEADER_READ_TIMEOUT_MS)");
            }
            return Verdict::Wait((head + header).min(next_blocked));
        }
        let last = self.last_activity.load(Ordering::Relaxed);
        if now >= last + idle {
            return Verdict::Close("idle (IDLE_TIMEOUT_MS)");
        }
        Verdict::Wait((last + idle).min(next_blocked))
    }
}

/// The socket, reporting its reads and writes to the connection's clock.
struct Watched {
    inner: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() {
            self.clock.read(buf.filled().len() - before);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.clock.wrote(polled.is_ready());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.clock.wrote(polled.is_ready());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The app, marking each request in flight from its complete head (when hyper
/// calls the service) until hyper drops its answer's body, that is once the
/// last byte is written or the connection is gone.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    clock: Arc<Clock>,
}

impl<S: App> Service<hyper::Request<Incoming>> for Tracked<S> {
    type Response = hyper::Response<TrackedBody>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<hyper::Request<Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: hyper::Request<Incoming>) -> Self::Future {
        let guard = InFlight::new(self.clock.clone());
        let clock = self.clock.clone();
        // axum boxes the body either way: wrapping it costs no allocation.
        let req = req.map(|body| Body::new(RequestBody { body, clock }));
        TrackedFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

/// A request's body, telling the clock while the server waits on it for
/// bytes the client does not send. Only while it is read: a body left unread
/// (its request queued) is not the client's delay.
struct RequestBody {
    body: Incoming,
    clock: Arc<Clock>,
}

impl hyper::body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        self.clock.body_waits(polled.is_pending());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The app's answer to come; dropped unanswered, its guard ends the request.
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F> Future for TrackedFuture<F>
where
    F: Future<Output = Result<axum::response::Response, Infallible>>,
{
    type Output = Result<hyper::Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(resp) = std::task::ready!(this.inner.poll(cx));
        let guard = this.guard.take().expect("polled after completion");
        Poll::Ready(Ok(resp.map(|body| TrackedBody {
            body,
            _guard: guard,
        })))
    }
}

/// One request in flight; dropping it (answer sent, or abandoned) ends it.
struct InFlight(Arc<Clock>);

impl InFlight {
    fn new(clock: Arc<Clock>) -> Self {
        clock.request();
        InFlight(clock)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.answered();
    }
}

/// An answer's body, holding its request's `InFlight` until hyper drops it.
struct TrackedBody {
    body: Body,
    _guard: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;

    fn limits() -> ConnLimits {
        ConnLimits {
            header_read_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(1000),
            max_connections: 4,
            max_header_bytes: 8192,
        }
    }

    fn clock_at(head: u64, last: u64) -> Clock {
        let c = Clock::new();
        c.head_since.store(head, Ordering::Relaxed);
        c.last_activity.store(last, Ordering::Relaxed);
        c
    }

    #[test]
    fn an_incomplete_head_gets_the_header_timeout() {
        let c = clock_at(1000, 1050);
        assert_eq!(c.verdict(1050, &limits()), Verdict::Wait(1100));
        assert!(matches!(c.verdict(1100, &limits()), Verdict::Close(_)));
    }

    #[test]
    fn a_request_in_flight_is_left_to_its_deadline() {
        let c = clock_at(1000, 1000);
        c.request();
        assert_eq!(c.verdict(50_000, &limits()), Verdict::Wait(51_000));
        c.answered();
        c.last_activity.store(50_000, Ordering::Relaxed);
        assert_eq!(c.verdict(50_000, &limits()), Verdict::Wait(51_000));
        assert!(matches!(c.verdict(51_000, &limits()), Verdict::Close(_)));
    }

    #[test]
    fn a_byte_after_an_answer_starts_the_next_head() {
        let c = clock_at(0, 1000);
        assert_eq!(c.verdict(1500, &limits()), Verdict::Wait(2000));
        c.read(1);
        let head = c.head_since.load(Ordering::Relaxed);
        assert_ne!(head, 0);
        c.read(1);
        assert_eq!(c.head_since.load(Ordering::Relaxed), head);
        c.request();
        assert_eq!(c.head_since.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_stalled_body_gets_the_header_timeout() {
        let c = clock_at(0, 1000);
        c.request();
        c.body_waits_since.store(2000, Ordering::Relaxed);
        assert_eq!(c.verdict(2050, &limits()), Verdict::Wait(2100));
        assert!(matches!(c.verdict(2100, &limits()), Verdict::Close(_)));
        c.body_waits(false);
        assert_eq!(c.verdict(2100, &limits()), Verdict::Wait(3100));
    }

    #[test]
    fn a_client_that_stops_reading_is_cut_even_mid_request() {
        let c = clock_at(0, 1000);
        c.request();
        c.write_blocked_since.store(2000, Ordering::Relaxed);
        assert_eq!(c.verdict(2500, &limits()), Verdict::Wait(3000));
        assert!(matches!(c.verdict(3000, &limits()), Verdict::Close(_)));
        c.wrote(true);
        assert_eq!(c.write_blocked_since.load(Ordering::Relaxed), 0);
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// `serve` on a free port until `stop` is sent; `server` is its task.
    async fn started(
        app: Router,
        limits: ConnLimits,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, limits, async {
            let _ = stopped.await;
        }));
        (addr, stop, server)
    }

    fn app() -> Router {
        Router::new().route("/", axum::routing::get(|| async { "ok" }))
    }

    #[tokio::test]
    async fn a_slow_head_is_cut_while_others_are_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, stop, server) = started(app(), limits()).await;

        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HT").await.unwrap();
        assert!(get(addr).await.ends_with("ok"));
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(2), slow.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the slow connection was not closed");

        let _ = stop.send(());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connections_over_the_limit_wait_for_a_free_one() {
        let limits = ConnLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_millis(300),
            ..limits()
        };
        let (addr, stop, server) = started(app(), limits).await;
        // Holds the only slot until its header timeout closes it.
        let _idle = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        assert!(get(addr).await.ends_with("ok"));
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        let _ = stop.send(());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_lets_the_request_in_flight_finish() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let app = Router::new().route(
            "/",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                "late"
            }),
        );
        let (addr, stop, server) = started(app, limits()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = stop.send(());
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.ends_with("late"), "{out}");
        server.await.unwrap();
    }
}
