//! The worker pool: which workers run, and which worker serves which request.
//!
//! Owns the admission queue, every worker's phase and in-flight requests, the
//! routing of worker frames back to the requests that wait for them, and every
//! policy about workers: boot, timeouts, recycling, reloads, replacing the
//! dead. It speaks the pipe protocol but not HTTP: requests arrive as `Job`s
//! and answers leave as `Event`s.

use std::collections::VecDeque;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, watch};

use crate::protocol::{self, FrameReader, FromWorker, ProtocolError, RequestId, ToWorker};
use crate::worker::{self, Process, Spec};
use crate::{error, info, warning};

/// Response chunks buffered per request before the worker is made to wait.
const EVENT_BUFFER: usize = 8;
/// A worker that dies younger than this counts towards a crash loop.
const STABLE_AFTER: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a hung worker has to print its tracebacks before SIGKILL.
const DUMP_GRACE: Duration = Duration::from_secs(2);
/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(100);

/// The pool's knobs, from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub workers: usize,
    pub threads: usize,
    /// Requests that may wait for a worker before new ones get 503.
    pub backlog: usize,
    pub timeout: Duration,
    pub queue_timeout: Option<Duration>,
    pub max_requests: Option<u64>,
    pub max_requests_jitter: u64,
    pub max_memory: Option<u64>,
}

/// A request as the pool sees it.
pub struct Job {
    /// The CGI environ as a pair blob (`environ::build`).
    pub environ: Bytes,
    /// The body received so far.
    pub body: Bytes,
    /// The rest of the body, pulled as the app reads it; `None` when `body` is all of it.
    pub rest: Option<Box<dyn BodySource>>,
}

/// The part of a request body still with the client. The pool pulls one
/// chunk each time the worker asks, so nothing is read before the app reads.
pub trait BodySource: Send + 'static {
    /// The next chunk; `None` at the end of the body.
    fn next_chunk(&mut self) -> NextChunk<'_>;
}

pub type NextChunk<'a> = Pin<Box<dyn Future<Output = Option<Result<Bytes, BodyError>>> + Send + 'a>>;

/// Why the rest of a request body cannot be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the client disconnected or broke the body's framing")]
    Client,
    #[error("the body is larger than --limit-request-body")]
    TooLarge,
    #[error("no more body arrived within --body-timeout")]
    Stalled,
}

/// What the pool tells the request that waits for its answer, in order:
/// `Head`, then `Chunk`s, then `End`; or `Failed` or `BodyFailed` at any
/// point. A channel that closes without `End` means the worker was lost.
#[derive(Debug)]
pub enum Event {
    Head {
        status: Bytes,
        headers: Vec<(Bytes, Bytes)>,
    },
    Chunk(Bytes),
    End,
    /// The rest of the request body could not be had: the request is over,
    /// and dropping its ticket tells the worker.
    BodyFailed(BodyError),
    Failed(Failure),
}

#[derive(Debug)]
pub enum Failure {
    /// The app raised; the traceback is for the error log.
    App { traceback: String },
    /// The header list could not be split into names and values.
    MalformedHeaders,
    /// The worker ran past the timeout and was killed.
    Timeout,
    /// The request waited for a worker past the queue timeout.
    QueueTimeout,
}

#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("every worker is busy and the queue is full")]
    QueueFull,
    #[error("the server is shutting down")]
    ShuttingDown,
}

#[derive(Debug, thiserror::Error)]
pub enum BootFailure {
    #[error("{0}")]
    Spawn(std::io::Error),
    #[error("the app failed to load:\n{0}")]
    Import(String),
    #[error("the worker exited before it was ready ({0})")]
    Died(String),
    #[error("the worker did not finish loading the app within the {0:?} timeout")]
    Timeout(Duration),
    #[error("the worker broke the protocol while booting: {0}")]
    Protocol(String),
}

pub struct Pool {
    shared: Arc<Shared>,
}

/// A submitted request's answer. Dropping it before the answer is complete
/// withdraws the request: from the queue, or from the worker (CANCEL).
pub struct Ticket {
    id: RequestId,
    events: mpsc::Receiver<Event>,
    done: bool,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    spec: Spec,
    settings: Settings,
    /// The number of live worker processes, watched by `stop`.
    live: watch::Sender<usize>,
}

type WorkerId = u64;

struct State {
    workers: Vec<Worker>,
    /// How many workers of the current generation should be serving.
    target: usize,
    /// Bumped by a reload: older workers are retired as new ones get ready.
    generation: u64,
    queue: VecDeque<Pending>,
    next_request: RequestId,
    next_worker: WorkerId,
    /// Unexpected deaths in a row of workers younger than `STABLE_AFTER`.
    crashes: u32,
    closing: bool,
    threads: usize,
}

struct Worker {
    id: WorkerId,
    generation: u64,
    phase: Phase,
    in_flight: VecDeque<InFlight>,
    served: u64,
    max_requests: Option<u64>,
}

/// A worker is Booting, Serving (idle when nothing is in flight, busy
/// otherwise), Draining (finishing what it has, taking nothing new) or
/// Exiting (its pipe closed, so it ends); only a Serving worker takes requests.
enum Phase {
    Booting,
    Serving(Link),
    Draining(Link),
    Exiting { pid: u32 },
}

/// The master's end of a ready worker's stdin.
struct Link {
    pid: u32,
    frames: mpsc::UnboundedSender<Bytes>,
}

struct Pending {
    id: RequestId,
    job: Job,
    events: mpsc::Sender<Event>,
    since: Instant,
}

struct InFlight {
    id: RequestId,
    events: mpsc::Sender<Event>,
    /// Wakes the body pump when the worker asks for more body.
    reads: Option<mpsc::Sender<()>>,
    stage: Stage,
    progress: Progress,
}

/// Where a request sent to a worker is.
enum Stage {
    /// Queued in the worker's pipe behind requests that hold every thread, so
    /// the worker has not started it: if the worker dies it goes elsewhere.
    InPipe { environ: Bytes, body: Bytes, queued: Instant },
    /// A thread may be running it; the timeout counts from `since`.
    Running { since: Instant },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Progress {
    Live,
    /// The client is gone; the worker was told and its frames are dropped.
    Cancelled,
    /// The worker ran past the timeout and is being killed.
    TimedOut,
}

/// A worker that said hello, ready to serve.
struct Booted {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    frames: FrameReader<ChildStdout>,
    python: String,
    codec: String,
}

impl Pool {
    /// Starts the workers and waits until every one has imported the app.
    pub async fn start(spec: Spec, settings: Settings) -> Result<Pool, BootFailure> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                workers: Vec::new(),
                target: settings.workers,
                generation: 0,
                queue: VecDeque::new(),
                next_request: 0,
                next_worker: 0,
                crashes: 0,
                closing: false,
                threads: settings.threads,
            }),
            spec,
            settings,
            live: watch::Sender::new(0),
        });
        let mut boots = tokio::task::JoinSet::new();
        for _ in 0..shared.settings.workers {
            let id = shared.lock().add_booting();
            let shared = shared.clone();
            boots.spawn(async move { (id, shared.boot().await) });
        }
        while let Some(joined) = boots.join_next().await {
            let (id, booted) = joined.expect("boot tasks do not panic");
            shared.install(id, booted?);
        }
        tokio::spawn(shared.clone().watchdog());
        Ok(Pool { shared })
    }

    /// Hands a request to a worker, or queues it.
    pub fn submit(&self, job: Job) -> Result<Ticket, Rejected> {
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        let mut state = self.shared.lock();
        if state.closing {
            return Err(Rejected::ShuttingDown);
        }
        let id = state.next_request;
        state.next_request = id.wrapping_add(1);
        let pending = Pending { id, job, events, since: Instant::now() };
        let pending = if state.queue.is_empty() { state.assign(pending) } else { Some(pending) };
        if let Some(pending) = pending {
            if state.queue.len() >= self.shared.settings.backlog {
                return Err(Rejected::QueueFull);
            }
            state.queue.push_back(pending);
        }
        Ok(Ticket { id, events: rx, done: false, shared: self.shared.clone() })
    }

    /// Starts a fresh generation of workers (new code); each old worker is
    /// retired, after its current request, as a new one becomes ready.
    pub fn reload(&self) {
        let mut state = self.shared.lock();
        state.generation += 1;
        info!("Reloading: starting {} new worker(s)", state.target);
        self.shared.top_up(&mut state);
    }

    /// One more worker (SIGTTIN).
    pub fn add_worker(&self) {
        let mut state = self.shared.lock();
        state.target += 1;
        info!("Increasing the number of workers to {}", state.target);
        self.shared.top_up(&mut state);
    }

    /// One worker fewer, never below one (SIGTTOU).
    pub fn remove_worker(&self) {
        let mut state = self.shared.lock();
        if state.target <= 1 {
            warning!("Not decreasing the number of workers below 1");
            return;
        }
        state.target -= 1;
        info!("Decreasing the number of workers to {}", state.target);
        let generation = state.generation;
        if let Some(w) = state.workers.iter_mut().find(|w| w.generation == generation && w.is_serving()) {
            w.retire();
        }
    }

    /// Closes every worker's pipe so each exits after its current requests,
    /// waits until `deadline` for them, then kills the rest.
    pub async fn stop(&self, deadline: Instant) {
        let pids: Vec<u32> = {
            let mut state = self.shared.lock();
            state.closing = true;
            for w in &mut state.workers {
                w.retire();
            }
            state.workers.iter().filter_map(|w| w.phase.pid()).collect()
        };
        let mut live = self.shared.live.subscribe();
        let graceful = deadline > Instant::now();
        if tokio::time::timeout_at(deadline.into(), live.wait_for(|&n| n == 0)).await.is_err() {
            for pid in pids {
                if graceful {
                    warning!("Worker {pid} did not exit within the graceful timeout; killing it");
                }
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            let _ = tokio::time::timeout(DUMP_GRACE, live.wait_for(|&n| n == 0)).await;
        }
    }
}

impl Ticket {
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let event = std::task::ready!(self.events.poll_recv(cx));
        self.done |= matches!(event, None | Some(Event::End | Event::Failed(_)));
        Poll::Ready(event)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.shared.withdraw(self.id);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts one worker process and waits for its hello.
    async fn boot(&self) -> Result<Booted, BootFailure> {
        let Process { mut child, pid, stdin, stdout } = worker::spawn(&self.spec).map_err(BootFailure::Spawn)?;
        info!("Booting worker with pid: {pid}");
        let mut frames = FrameReader::new(stdout);
        let timeout = self.settings.timeout;
        let failure = match tokio::time::timeout(timeout, frames.next()).await {
            Err(_) => BootFailure::Timeout(timeout),
            Ok(Ok(Some(frame))) => match protocol::decode(&frame) {
                Ok(FromWorker::Hello { version, python, codec, .. }) if version == protocol::VERSION => {
                    return Ok(Booted { child, pid, stdin, frames, python, codec });
                }
                Ok(FromWorker::Hello { version, .. }) => BootFailure::Protocol(format!(
                    "it speaks protocol {version}, this master speaks {}",
                    protocol::VERSION
                )),
                Ok(FromWorker::BootError { traceback }) => BootFailure::Import(traceback),
                Ok(other) => BootFailure::Protocol(format!("expected a hello, got {other:?}")),
                Err(e) => BootFailure::Protocol(e.to_string()),
            },
            Ok(Ok(None)) => BootFailure::Died(describe_exit(child.wait().await.ok())),
            Ok(Err(e)) => BootFailure::Protocol(e.to_string()),
        };
        let _ = child.start_kill();
        Err(failure)
    }

    /// Puts a booted worker to work in place of its Booting entry.
    fn install(self: &Arc<Self>, id: WorkerId, booted: Booted) {
        let Booted { child, pid, stdin, frames, python, codec } = booted;
        info!("Worker {pid} ready: Python {python}, codec {codec}");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(stdin, rx));
        self.live.send_modify(|n| *n += 1);
        tokio::spawn(self.clone().serve(id, pid, child, frames));
        let mut state = self.lock();
        let (closing, current) = (state.closing, state.generation);
        let Some(wi) = state.index(id) else { return };
        let w = &mut state.workers[wi];
        w.phase = Phase::Serving(Link { pid, frames: tx });
        w.max_requests = self.settings.max_requests.map(|max| request_limit(max, self.settings.max_requests_jitter));
        if closing || w.generation != current {
            w.retire();
            return;
        }
        // A reload hands over one worker at a time: the oldest of an earlier generation.
        if let Some(old) = state.workers.iter_mut().find(|w| w.generation != current && w.is_serving()) {
            old.retire();
        }
        state.fill(wi);
    }

    /// Reads a ready worker's frames until its pipe closes, then buries it.
    async fn serve(self: Arc<Self>, id: WorkerId, pid: u32, mut child: Child, mut frames: FrameReader<ChildStdout>) {
        let born = Instant::now();
        let broken = loop {
            let msg = match frames.next().await {
                Ok(Some(frame)) => protocol::decode(&frame),
                Ok(None) => break None,
                Err(e) => Err(e),
            };
            if let Err(e) = match msg {
                Ok(msg) => self.route(id, pid, msg).await,
                Err(e) => Err(e),
            } {
                break Some(e);
            }
        };
        if let Some(e) = &broken {
            error!("Worker {pid}: {e}; killing it");
            let _ = child.start_kill();
        }
        let status = child.wait().await.ok();
        self.live.send_modify(|n| *n -= 1);
        self.bury(id, pid, status, born.elapsed());
    }

    /// Passes one worker frame on to the request it belongs to.
    async fn route(self: &Arc<Self>, wid: WorkerId, pid: u32, msg: FromWorker) -> Result<(), ProtocolError> {
        let id = msg.request_id().ok_or_else(|| ProtocolError::Malformed(format!("unexpected {msg:?} after boot")))?;
        let (events, last) = match msg {
            FromWorker::Read { .. } => {
                let mut state = self.lock();
                let entry = state.request(wid, id)?;
                let Some(reads) = &entry.reads else {
                    return Err(ProtocolError::Malformed(format!("request {id} has no more body to read")));
                };
                // A full channel already holds a wake-up.
                let _ = reads.try_send(());
                return Ok(());
            }
            FromWorker::Start { status, headers, body, last, .. } => {
                let mut events = match protocol::pairs(&headers) {
                    Some(headers) => vec![Event::Head { status, headers }],
                    None => vec![Event::Failed(Failure::MalformedHeaders)],
                };
                if !body.is_empty() {
                    events.push(Event::Chunk(body));
                }
                (events, last)
            }
            FromWorker::Body { chunk, last, .. } => {
                (if chunk.is_empty() { vec![] } else { vec![Event::Chunk(chunk)] }, last)
            }
            FromWorker::Error { traceback, .. } => (vec![Event::Failed(Failure::App { traceback })], true),
            FromWorker::Hello { .. } | FromWorker::BootError { .. } => unreachable!("no request id"),
        };
        let (sender, progress) = {
            let mut state = self.lock();
            let entry = state.request(wid, id)?;
            (entry.events.clone(), entry.progress)
        };
        let mut delivered = progress == Progress::Live;
        if delivered {
            for event in events.into_iter().chain(last.then_some(Event::End)) {
                if let Err(mpsc::error::SendError(event)) = sender.send(event).await {
                    if let Event::Failed(Failure::App { traceback }) = event {
                        error!("Error handling a request whose client is gone (worker {pid}):\n{traceback}");
                    }
                    delivered = false;
                    break;
                }
            }
        }
        if !last {
            if !delivered && progress == Progress::Live {
                self.lock().cancel(wid, id);
            }
            return Ok(());
        }
        let retired = self.lock().complete(wid, id);
        let retired = retired || self.settings.max_memory.is_some_and(|limit| self.retire_if_over(wid, pid, limit));
        if retired {
            self.top_up(&mut self.lock());
        }
        Ok(())
    }

    /// Retires a worker whose resident memory is over `limit`.
    fn retire_if_over(&self, wid: WorkerId, pid: u32, limit: u64) -> bool {
        let Some(rss) = rss_bytes(pid).filter(|&rss| rss > limit) else { return false };
        let mut state = self.lock();
        let Some(w) = state.workers.iter_mut().find(|w| w.id == wid && w.is_serving()) else { return false };
        info!("Worker {pid} uses {} MiB, over --max-worker-memory; retiring it", rss >> 20);
        w.retire();
        true
    }

    /// A ticket was dropped before its answer was complete.
    fn withdraw(&self, id: RequestId) {
        let mut state = self.lock();
        if let Some(pos) = state.queue.iter().position(|p| p.id == id) {
            state.queue.remove(pos);
            return;
        }
        if let Some(wid) = state.workers.iter().find(|w| w.in_flight.iter().any(|r| r.id == id)).map(|w| w.id) {
            state.cancel(wid, id);
        }
    }

    /// A worker process ended: fail what it was running, hand on what it never
    /// started, and start a replacement.
    fn bury(self: &Arc<Self>, wid: WorkerId, pid: u32, status: Option<ExitStatus>, age: Duration) {
        let mut state = self.lock();
        let Some(wi) = state.index(wid) else { return };
        let worker = state.workers.remove(wi);
        let expected = state.closing || matches!(worker.phase, Phase::Draining(_) | Phase::Exiting { .. });
        let what = describe_exit(status);
        if expected {
            info!("Worker {pid} exited ({what})");
        } else {
            state.crashes = if age < STABLE_AFTER { state.crashes + 1 } else { 0 };
            error!("Worker {pid} died ({what})");
        }
        let mut handed_on = 0;
        for request in worker.in_flight.into_iter().rev() {
            match (request.stage, request.progress) {
                (Stage::InPipe { environ, body, queued }, Progress::Live) => {
                    let job = Job { environ, body, rest: None };
                    state.queue.push_front(Pending { id: request.id, job, events: request.events, since: queued });
                    handed_on += 1;
                }
                (_, Progress::TimedOut) => {
                    let _ = request.events.try_send(Event::Failed(Failure::Timeout));
                }
                // Dropping the sender tells the request its worker was lost: 502, or a cut connection.
                _ => {}
            }
        }
        if handed_on > 0 {
            info!("{handed_on} request(s) queued on worker {pid} that it never started go to another worker");
        }
        self.top_up(&mut state);
        for wi in 0..state.workers.len() {
            state.fill(wi);
        }
    }

    /// Boots workers until the current generation has `target` of them.
    fn top_up(self: &Arc<Self>, state: &mut State) {
        if state.closing {
            return;
        }
        let generation = state.generation;
        let current = state
            .workers
            .iter()
            .filter(|w| w.generation == generation && matches!(w.phase, Phase::Booting | Phase::Serving(_)))
            .count();
        for _ in current..state.target {
            let id = state.add_booting();
            let delay = backoff(state.crashes);
            if !delay.is_zero() {
                warning!("Workers keep dying within {STABLE_AFTER:?} of starting; the next starts in {delay:?}");
            }
            tokio::spawn(self.clone().replace(id, delay));
        }
    }

    async fn replace(self: Arc<Self>, id: WorkerId, delay: Duration) {
        tokio::time::sleep(delay).await;
        let booted = if self.lock().closing { None } else { Some(self.boot().await) };
        match booted {
            Some(Ok(booted)) => self.install(id, booted),
            Some(Err(e)) => {
                error!("A new worker failed to boot: {e}");
                let mut state = self.lock();
                state.workers.retain(|w| w.id != id);
                state.crashes += 1;
                self.top_up(&mut state);
            }
            None => self.lock().workers.retain(|w| w.id != id),
        }
    }

    /// Kills workers past the timeout (after a traceback) and answers requests
    /// that waited in the queue past the queue timeout.
    async fn watchdog(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut state = self.lock();
            if state.closing && state.workers.is_empty() {
                return;
            }
            let timeout = self.settings.timeout;
            for w in &mut state.workers {
                let Some(pid) = w.phase.pid() else { continue };
                if w.in_flight.iter().any(|r| r.progress == Progress::TimedOut) {
                    continue;
                }
                let overdue = w.in_flight.iter_mut().find(|r| {
                    r.progress == Progress::Live
                        && matches!(r.stage, Stage::Running { since } if since.elapsed() > timeout)
                });
                if let Some(request) = overdue {
                    request.progress = Progress::TimedOut;
                    error!("Worker {pid} timed out ({timeout:?} on one request); its threads' tracebacks follow, then it is killed");
                    // The shim's faulthandler prints every thread's traceback on SIGABRT.
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGABRT);
                    let shared = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(DUMP_GRACE).await;
                        // Only a worker still ours: its pid may be reused once it is reaped.
                        if shared.lock().workers.iter().any(|w| w.phase.pid() == Some(pid)) {
                            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                        }
                    });
                }
            }
            if let Some(limit) = self.settings.queue_timeout {
                state.drop_stale(limit);
            }
        }
    }
}

impl State {
    fn add_booting(&mut self) -> WorkerId {
        let id = self.next_worker;
        self.next_worker += 1;
        self.workers.push(Worker {
            id,
            generation: self.generation,
            phase: Phase::Booting,
            in_flight: VecDeque::new(),
            served: 0,
            max_requests: None,
        });
        id
    }

    fn index(&self, id: WorkerId) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
    }

    fn request(&mut self, wid: WorkerId, id: RequestId) -> Result<&mut InFlight, ProtocolError> {
        let entry = self
            .workers
            .iter_mut()
            .find(|w| w.id == wid)
            .and_then(|w| w.in_flight.iter_mut().find(|r| r.id == id))
            .ok_or_else(|| {
                ProtocolError::Malformed(format!("a frame names request {id}, which is not in flight there"))
            })?;
        // The worker answering a request is running it, whatever the master thought.
        if let Stage::InPipe { .. } = entry.stage {
            entry.stage = Stage::Running { since: Instant::now() };
        }
        Ok(entry)
    }

    /// Sends `pending` to a worker that can take it now, or gives it back.
    fn assign(&mut self, pending: Pending) -> Option<Pending> {
        let serving = |w: &&Worker| w.is_serving();
        let free_thread = self.workers.iter().filter(serving).filter(|w| w.in_flight.len() < self.threads);
        let pick = free_thread.min_by_key(|w| w.in_flight.len()).map(|w| w.id).or_else(|| {
            // Queued in a busy worker's pipe only with its whole body, so it can
            // be handed on if that worker dies before starting it.
            pending.job.rest.is_none().then_some(()).and_then(|()| {
                let room = self.workers.iter().filter(serving).filter(|w| w.in_flight.len() <= self.threads);
                room.min_by_key(|w| w.in_flight.len()).map(|w| w.id)
            })
        });
        match pick.and_then(|id| self.index(id)) {
            Some(wi) => {
                self.dispatch(wi, pending);
                None
            }
            None => Some(pending),
        }
    }

    /// Gives queued requests to worker `wi` while it has room.
    fn fill(&mut self, wi: usize) {
        while self.workers[wi].is_serving() && self.workers[wi].in_flight.len() <= self.threads {
            let Some(front) = self.queue.front() else { return };
            if front.job.rest.is_some() && self.workers[wi].in_flight.len() >= self.threads {
                return;
            }
            let pending = self.queue.pop_front().expect("front exists");
            self.dispatch(wi, pending);
        }
    }

    fn dispatch(&mut self, wi: usize, pending: Pending) {
        let Pending { id, job: Job { environ, body, rest }, events, since } = pending;
        let threads = self.threads;
        let w = &mut self.workers[wi];
        w.send(&ToWorker::Request { id, environ: &environ, body: &body, more: rest.is_some() });
        let reads = rest.map(|rest| {
            let (reads, wakeups) = mpsc::channel(1);
            let frames = w.phase.link().expect("dispatch only to a serving worker").frames.clone();
            tokio::spawn(pump_body(id, wakeups, rest, frames, events.clone()));
            reads
        });
        let stage = if w.in_flight.len() < threads {
            Stage::Running { since: Instant::now() }
        } else {
            Stage::InPipe { environ, body, queued: since }
        };
        w.in_flight.push_back(InFlight { id, events, reads, stage, progress: Progress::Live });
    }

    /// The worker sent the last frame of request `id`; true if that retired
    /// the worker (--max-requests), which then needs a replacement.
    fn complete(&mut self, wid: WorkerId, id: RequestId) -> bool {
        let threads = self.threads;
        let Some(wi) = self.index(wid) else { return false };
        let w = &mut self.workers[wi];
        w.in_flight.retain(|r| r.id != id);
        w.served += 1;
        // Requests start in the order they were sent, as threads free up.
        if let Some(next) = w.in_flight.get_mut(threads - 1) {
            if let Stage::InPipe { .. } = next.stage {
                next.stage = Stage::Running { since: Instant::now() };
            }
        }
        let recycled = w.max_requests.is_some_and(|max| w.served >= max) && w.is_serving();
        if recycled {
            info!(
                "Worker {} served {} requests (--max-requests); retiring it",
                w.phase.pid().unwrap_or_default(),
                w.served
            );
        }
        if recycled || matches!(w.phase, Phase::Draining(_)) {
            w.retire();
        }
        self.fill(wi);
        recycled
    }

    /// Answers 503 to every request that waited longer than `limit` for a
    /// thread: in the master's queue, or in a worker's pipe (which is told to
    /// skip it).
    fn drop_stale(&mut self, limit: Duration) {
        while self.queue.front().is_some_and(|p| p.since.elapsed() > limit) {
            let stale = self.queue.pop_front().expect("front exists");
            let _ = stale.events.try_send(Event::Failed(Failure::QueueTimeout));
        }
        for w in &mut self.workers {
            let stale: Vec<RequestId> = w
                .in_flight
                .iter()
                .filter(|r| r.progress == Progress::Live)
                .filter(|r| matches!(r.stage, Stage::InPipe { queued, .. } if queued.elapsed() > limit))
                .map(|r| r.id)
                .collect();
            for id in stale {
                if let Some(entry) = w.in_flight.iter_mut().find(|r| r.id == id) {
                    entry.progress = Progress::Cancelled;
                    let _ = entry.events.try_send(Event::Failed(Failure::QueueTimeout));
                }
                w.send(&ToWorker::Cancel { id });
            }
        }
    }

    fn cancel(&mut self, wid: WorkerId, id: RequestId) {
        let Some(w) = self.workers.iter_mut().find(|w| w.id == wid) else { return };
        let Some(entry) = w.in_flight.iter_mut().find(|r| r.id == id) else { return };
        if entry.progress == Progress::Live {
            entry.progress = Progress::Cancelled;
            w.send(&ToWorker::Cancel { id });
        }
    }
}

impl Worker {
    fn is_serving(&self) -> bool {
        matches!(self.phase, Phase::Serving(_))
    }

    /// Stops giving this worker requests; its pipe closes, so it exits, once
    /// nothing is in flight.
    fn retire(&mut self) {
        self.phase = match std::mem::replace(&mut self.phase, Phase::Booting) {
            Phase::Serving(link) | Phase::Draining(link) if !self.in_flight.is_empty() => Phase::Draining(link),
            Phase::Serving(link) | Phase::Draining(link) => Phase::Exiting { pid: link.pid },
            other => other,
        };
    }

    fn send(&self, msg: &ToWorker<'_>) {
        if let Some(link) = self.phase.link() {
            let mut frame = BytesMut::new();
            protocol::encode(msg, &mut frame);
            // A closed pipe means the worker is dying; its reader buries it.
            let _ = link.frames.send(frame.freeze());
        }
    }
}

impl Phase {
    fn link(&self) -> Option<&Link> {
        match self {
            Phase::Serving(link) | Phase::Draining(link) => Some(link),
            Phase::Booting | Phase::Exiting { .. } => None,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Phase::Serving(link) | Phase::Draining(link) => Some(link.pid),
            Phase::Exiting { pid } => Some(*pid),
            Phase::Booting => None,
        }
    }
}

/// Feeds a request's remaining body to the worker, one chunk per READ. A body
/// that fails is the request's to answer (408, 413, 400 or a cut); the ticket
/// it drops then cancels the request at the worker. The pump holds the
/// request's `events` open, so it must end as soon as the worker is lost (its
/// `wakeups` close) even while it waits for a client that has stalled: the
/// closed channel is what answers 502.
async fn pump_body(
    id: RequestId,
    mut wakeups: mpsc::Receiver<()>,
    mut rest: Box<dyn BodySource>,
    frames: mpsc::UnboundedSender<Bytes>,
    events: mpsc::Sender<Event>,
) {
    while wakeups.recv().await.is_some() {
        let mut frame = BytesMut::new();
        let chunk = tokio::select! {
            chunk = rest.next_chunk() => chunk,
            None = wakeups.recv() => return,
        };
        let more = match chunk {
            Some(Ok(chunk)) => {
                protocol::encode(&ToWorker::Body { id, chunk: &chunk, more: true }, &mut frame);
                true
            }
            None => {
                protocol::encode(&ToWorker::Body { id, chunk: b"", more: false }, &mut frame);
                false
            }
            Some(Err(e)) => {
                let _ = events.send(Event::BodyFailed(e)).await;
                return;
            }
        };
        if frames.send(frame.freeze()).is_err() || !more {
            return;
        }
    }
}

/// Writes frames to a worker's stdin, every frame that is ready in one write.
async fn write_frames(mut stdin: ChildStdin, mut frames: mpsc::UnboundedReceiver<Bytes>) {
    let mut batch = BytesMut::new();
    while let Some(first) = frames.recv().await {
        let data = match frames.try_recv() {
            Err(_) => first,
            Ok(second) => {
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                while let Ok(more) = frames.try_recv() {
                    batch.extend_from_slice(&more);
                }
                batch.split().freeze()
            }
        };
        // A failed write means the worker is gone; its reader notices and buries it.
        if stdin.write_all(&data).await.is_err() {
            return;
        }
    }
}

/// A worker's resident memory, from /proc.
fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    Some(pages * page_size)
}

/// The request count after which a worker retires: `max` plus up to `jitter`,
/// so workers started together do not all restart together.
fn request_limit(max: u64, jitter: u64) -> u64 {
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    max + random % (jitter + 1)
}

fn backoff(crashes: u32) -> Duration {
    match crashes {
        0 | 1 => Duration::ZERO,
        n => (Duration::from_millis(100) * 2u32.saturating_pow(n - 2)).min(MAX_BACKOFF),
    }
}

fn describe_exit(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) if s.code().is_some() => format!("exit code {}", s.code().unwrap_or_default()),
        Some(s) => match s.signal().map(Signal::try_from) {
            Some(Ok(sig)) => format!("killed by signal {} ({sig})", sig as i32),
            Some(Err(_)) | None => format!("{s}"),
        },
        None => "exit status unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(5), Duration::from_millis(800));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn request_limit_stays_in_range() {
        for _ in 0..100 {
            let limit = request_limit(100, 10);
            assert!((100..=110).contains(&limit), "{limit}");
        }
        assert_eq!(request_limit(5, 0), 5);
    }
}
