//! The worker pool: which worker serves which request.
//!
//! Owns the admission queue, each worker's phase and in-flight requests, the
//! routing of worker frames back to the requests waiting for them, and the
//! replacement of workers that die. It speaks the pipe protocol but not HTTP:
//! requests arrive as `Job`s and answers leave as `Event`s.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, watch};

use crate::protocol::{self, FrameReader, FromWorker, ProtocolError, RequestId, ToWorker};
use crate::worker::{self, Process, Spec};
use crate::{error, info, warning};

/// Response chunks buffered per request before the worker is made to wait.
const EVENT_BUFFER: usize = 8;
/// Requests in flight per worker: the running one and one queued behind it,
/// so a worker never waits a pipe round trip for its next request.
const PER_WORKER: usize = 2;
/// A worker that dies younger than this counts towards a crash loop.
const STABLE_AFTER: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A request as the pool sees it.
pub struct Job {
    /// The CGI environ as a pair blob (`environ::build`).
    pub environ: Bytes,
    /// The body received so far.
    pub body: Bytes,
    /// The rest of the body, pulled as the app reads it; `None` when `body` is all of it.
    pub rest: Option<mpsc::Receiver<Result<Bytes, BodyError>>>,
}

/// The client's body stream failed (it disconnected or sent bad framing).
#[derive(Debug)]
pub struct BodyError;

/// What the pool tells the request that waits for its answer, in order:
/// `Head`, then `Chunk`s, then `End`; or `Failed` at any point. A channel that
/// closes without `End` means the worker was lost.
#[derive(Debug)]
pub enum Event {
    Head { status: Bytes, headers: Vec<(Bytes, Bytes)> },
    Chunk(Bytes),
    End,
    Failed(Failure),
}

#[derive(Debug)]
pub enum Failure {
    /// The app raised; the traceback is for the error log.
    App { traceback: String },
    /// The header list could not be split into names and values.
    MalformedHeaders,
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
    #[error("the worker broke the protocol while booting: {0}")]
    Protocol(String),
}

pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    spec: Spec,
    backlog: usize,
    /// The number of live worker processes, watched by `stop`.
    live: watch::Sender<usize>,
}

struct State {
    slots: Vec<Slot>,
    queue: VecDeque<Pending>,
    next_id: RequestId,
    closing: bool,
}

struct Slot {
    phase: Phase,
    in_flight: VecDeque<InFlight>,
    /// Deaths in a row of workers that did not live `STABLE_AFTER`.
    crashes: u32,
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

struct Pending {
    job: Job,
    events: mpsc::Sender<Event>,
}

struct InFlight {
    id: RequestId,
    events: mpsc::Sender<Event>,
    /// Wakes the body pump when the worker asks for more body.
    reads: Option<mpsc::Sender<()>>,
    /// The request itself, kept while it could still be handed to another
    /// worker: it was queued behind another request and its body is complete.
    retry: Option<(Bytes, Bytes)>,
    progress: Progress,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// No frame yet: the worker may not have started it.
    Waiting,
    Streaming,
    /// The client is gone; the worker was told and its frames are dropped.
    Cancelled,
}

/// A worker that said hello, ready to be given a slot.
struct Booted {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    frames: FrameReader<ChildStdout>,
    python: String,
    codec: String,
}

impl Pool {
    /// Starts `workers` workers and waits until every one has imported the app.
    pub async fn start(spec: Spec, workers: usize, backlog: usize) -> Result<Pool, BootFailure> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                slots: (0..workers)
                    .map(|_| Slot { phase: Phase::Booting, in_flight: VecDeque::new(), crashes: 0 })
                    .collect(),
                queue: VecDeque::new(),
                next_id: 0,
                closing: false,
            }),
            spec,
            backlog,
            live: watch::Sender::new(0),
        });
        let mut boots = tokio::task::JoinSet::new();
        for slot in 0..workers {
            let shared = shared.clone();
            boots.spawn(async move { (slot, shared.boot().await) });
        }
        while let Some(joined) = boots.join_next().await {
            let (slot, booted) = joined.expect("boot tasks do not panic");
            shared.install(slot, booted?);
        }
        Ok(Pool { shared })
    }

    /// Hands a request to a worker, or queues it; the receiver gets its answer.
    pub fn submit(&self, job: Job) -> Result<mpsc::Receiver<Event>, Rejected> {
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        let mut state = self.shared.lock();
        if state.closing {
            return Err(Rejected::ShuttingDown);
        }
        let pending = Pending { job, events };
        let pending = if state.queue.is_empty() { state.assign(pending) } else { Some(pending) };
        if let Some(pending) = pending {
            if state.queue.len() >= self.shared.backlog {
                return Err(Rejected::QueueFull);
            }
            state.queue.push_back(pending);
        }
        Ok(rx)
    }

    /// Closes every worker's pipe so each exits after its current request,
    /// waits up to `grace` for them, then kills the rest.
    pub async fn stop(&self, grace: Duration) {
        let pids: Vec<u32> = {
            let mut state = self.shared.lock();
            state.closing = true;
            for slot in &mut state.slots {
                slot.retire();
            }
            state.slots.iter().filter_map(|s| s.phase.pid()).collect()
        };
        let mut live = self.shared.live.subscribe();
        if tokio::time::timeout(grace, live.wait_for(|&n| n == 0)).await.is_err() {
            for pid in pids {
                warning!("Worker {pid} did not exit within the graceful timeout; killing it");
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts one worker and waits for its hello.
    async fn boot(&self) -> Result<Booted, BootFailure> {
        let Process { mut child, pid, stdin, stdout } = worker::spawn(&self.spec).map_err(BootFailure::Spawn)?;
        info!("Booting worker with pid: {pid}");
        let mut frames = FrameReader::new(stdout);
        let failure = match frames.next().await {
            Ok(Some(frame)) => match protocol::decode(&frame) {
                Ok(FromWorker::Hello { version, python, codec, .. }) if version == protocol::VERSION => {
                    return Ok(Booted { child, pid, stdin, frames, python, codec });
                }
                Ok(FromWorker::Hello { version, .. }) => BootFailure::Protocol(format!(
                    "it speaks protocol version {version}, this master speaks {}",
                    protocol::VERSION
                )),
                Ok(FromWorker::BootError { traceback }) => BootFailure::Import(traceback),
                Ok(other) => BootFailure::Protocol(format!("expected a hello, got {other:?}")),
                Err(e) => BootFailure::Protocol(e.to_string()),
            },
            Ok(None) => BootFailure::Died(describe_exit(child.wait().await.ok())),
            Err(e) => BootFailure::Protocol(e.to_string()),
        };
        let _ = child.start_kill();
        Err(failure)
    }

    fn install(self: &Arc<Self>, slot: usize, booted: Booted) {
        let Booted { child, pid, stdin, frames, python, codec } = booted;
        info!("Worker {pid} ready: Python {python}, codec {codec}");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(stdin, rx));
        self.live.send_modify(|n| *n += 1);
        {
            let mut state = self.lock();
            let closing = state.closing;
            let s = &mut state.slots[slot];
            s.phase = Phase::Serving(Link { pid, frames: tx });
            if closing {
                s.retire();
            }
            state.fill(slot);
        }
        tokio::spawn(self.clone().serve(slot, pid, child, frames));
    }

    /// Reads a ready worker's frames until its pipe closes, then buries it.
    async fn serve(self: Arc<Self>, slot: usize, pid: u32, mut child: Child, mut frames: FrameReader<ChildStdout>) {
        let born = Instant::now();
        let broken = loop {
            let msg = match frames.next().await {
                Ok(Some(frame)) => protocol::decode(&frame),
                Ok(None) => break None,
                Err(e) => Err(e),
            };
            match msg {
                Ok(msg) => {
                    if let Err(e) = self.route(slot, msg).await {
                        break Some(e);
                    }
                }
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = &broken {
            error!("Worker {pid}: {e}; killing it");
            let _ = child.start_kill();
        }
        let status = child.wait().await.ok();
        self.live.send_modify(|n| *n -= 1);
        self.buried(slot, pid, status, born.elapsed());
    }

    /// Passes one worker frame on to the request it belongs to.
    async fn route(&self, slot: usize, msg: FromWorker) -> Result<(), ProtocolError> {
        let id = msg.request_id().ok_or_else(|| ProtocolError::Malformed(format!("unexpected {msg:?} after boot")))?;
        if let FromWorker::Read { .. } = msg {
            let state = self.lock();
            let entry = state.slots[slot].find(id)?;
            let Some(reads) = &entry.reads else {
                return Err(ProtocolError::Malformed(format!("request {id} has no more body to read")));
            };
            // A full channel already holds a wake-up.
            let _ = reads.try_send(());
            return Ok(());
        }
        let (events, last) = match msg {
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
            FromWorker::Hello { .. } | FromWorker::BootError { .. } | FromWorker::Read { .. } => {
                unreachable!("handled above")
            }
        };
        let (sender, progress) = {
            let mut state = self.lock();
            let entry = state.slots[slot].find_mut(id)?;
            if entry.progress == Progress::Waiting {
                entry.progress = Progress::Streaming;
            }
            (entry.events.clone(), entry.progress)
        };
        let mut delivered = progress != Progress::Cancelled;
        let mut events = events.into_iter().chain(last.then_some(Event::End));
        if delivered {
            for event in events.by_ref() {
                if let Err(mpsc::error::SendError(event)) = sender.send(event).await {
                    if let Event::Failed(Failure::App { traceback }) = event {
                        error!(
                            "Error handling a request whose client is gone (worker {}):\n{traceback}",
                            self.pid(slot)
                        );
                    }
                    delivered = false;
                    break;
                }
            }
        }
        let mut state = self.lock();
        if last {
            let s = &mut state.slots[slot];
            s.in_flight.retain(|r| r.id != id);
            if matches!(s.phase, Phase::Draining(_)) {
                s.retire();
            }
            state.fill(slot);
        } else if !delivered && progress != Progress::Cancelled {
            state.slots[slot].find_mut(id)?.progress = Progress::Cancelled;
            state.slots[slot].send(&ToWorker::Cancel { id });
        }
        Ok(())
    }

    fn pid(&self, slot: usize) -> u32 {
        self.lock().slots[slot].phase.pid().unwrap_or_default()
    }

    /// A worker process ended: fail what it was running, hand on what it never
    /// started, and start a replacement.
    fn buried(self: &Arc<Self>, slot: usize, pid: u32, status: Option<ExitStatus>, age: Duration) {
        let mut state = self.lock();
        let closing = state.closing;
        let s = &mut state.slots[slot];
        let expected = closing || matches!(s.phase, Phase::Draining(_) | Phase::Exiting { .. });
        s.phase = Phase::Booting;
        s.crashes = if age >= STABLE_AFTER { 0 } else { s.crashes + 1 };
        let crashes = s.crashes;
        let mut in_flight = std::mem::take(&mut s.in_flight).into_iter();
        // Dropping a request's sender tells it the worker was lost (502, or a cut connection).
        let running = in_flight.next();
        let mut handed_on = 0;
        for request in in_flight.rev() {
            if let (Some((environ, body)), Progress::Waiting) = (request.retry, request.progress) {
                state.queue.push_front(Pending { job: Job { environ, body, rest: None }, events: request.events });
                handed_on += 1;
            }
        }
        let what = describe_exit(status);
        if expected {
            info!("Worker {pid} exited ({what})");
        } else {
            let lost = if running.is_some() { "; its request failed" } else { "" };
            error!("Worker {pid} died ({what}){lost}");
        }
        if handed_on > 0 {
            info!("{handed_on} request(s) queued on worker {pid} were handed to another worker");
        }
        drop(running);
        for other in 0..state.slots.len() {
            state.fill(other);
        }
        if closing {
            return;
        }
        drop(state);
        let delay = backoff(crashes);
        if !delay.is_zero() {
            warning!("Worker {pid} died {crashes} times in a row within {STABLE_AFTER:?} of starting; restarting it in {delay:?}");
        }
        tokio::spawn(self.clone().respawn(slot, delay));
    }

    async fn respawn(self: Arc<Self>, slot: usize, mut delay: Duration) {
        loop {
            tokio::time::sleep(delay).await;
            if self.lock().closing {
                return;
            }
            match self.boot().await {
                Ok(booted) => return self.install(slot, booted),
                Err(e) => {
                    let crashes = {
                        let mut state = self.lock();
                        state.slots[slot].crashes += 1;
                        state.slots[slot].crashes
                    };
                    delay = backoff(crashes);
                    error!("A replacement worker failed to boot; retrying in {delay:?}: {e}");
                }
            }
        }
    }
}

impl State {
    /// Sends `pending` to a worker that can take it now, or gives it back.
    fn assign(&mut self, pending: Pending) -> Option<Pending> {
        let idle = self.slots.iter().position(|s| matches!(s.phase, Phase::Serving(_)) && s.in_flight.is_empty());
        // A request queued behind a busy one must not need the client again
        // (its body is complete), so it can be handed on if the worker dies.
        let behind = || {
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s.phase, Phase::Serving(_)) && s.in_flight.len() < PER_WORKER)
                .min_by_key(|(_, s)| s.in_flight.len())
                .map(|(i, _)| i)
        };
        let slot = idle.or_else(|| if pending.job.rest.is_none() { behind() } else { None });
        match slot {
            Some(slot) => {
                self.dispatch(slot, pending);
                None
            }
            None => Some(pending),
        }
    }

    /// Gives queued requests to `slot` while it has room.
    fn fill(&mut self, slot: usize) {
        while matches!(self.slots[slot].phase, Phase::Serving(_)) && self.slots[slot].in_flight.len() < PER_WORKER {
            let Some(front) = self.queue.front() else { return };
            if front.events.is_closed() {
                // The client left while its request waited: no worker ever sees it.
                self.queue.pop_front();
                continue;
            }
            if front.job.rest.is_some() && !self.slots[slot].in_flight.is_empty() {
                return;
            }
            let pending = self.queue.pop_front().expect("front exists");
            self.dispatch(slot, pending);
        }
    }

    fn dispatch(&mut self, slot: usize, pending: Pending) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let Pending { job: Job { environ, body, rest }, events } = pending;
        let slot = &mut self.slots[slot];
        slot.send(&ToWorker::Request { id, environ: &environ, body: &body, more: rest.is_some() });
        let reads = rest.map(|rest| {
            let (reads, wakeups) = mpsc::channel(1);
            let frames = slot.phase.link().expect("dispatch only to a serving worker").frames.clone();
            tokio::spawn(pump_body(id, wakeups, rest, frames));
            reads
        });
        let retry = (reads.is_none() && !slot.in_flight.is_empty()).then_some((environ, body));
        slot.in_flight.push_back(InFlight { id, events, reads, retry, progress: Progress::Waiting });
    }
}

impl Slot {
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

    fn find(&self, id: RequestId) -> Result<&InFlight, ProtocolError> {
        self.in_flight.iter().find(|r| r.id == id).ok_or_else(|| unknown(id))
    }

    fn find_mut(&mut self, id: RequestId) -> Result<&mut InFlight, ProtocolError> {
        self.in_flight.iter_mut().find(|r| r.id == id).ok_or_else(|| unknown(id))
    }
}

fn unknown(id: RequestId) -> ProtocolError {
    ProtocolError::Malformed(format!("a frame names request {id}, which is not in flight on this worker"))
}

/// Feeds a request's remaining body to the worker, one chunk per READ.
async fn pump_body(
    id: RequestId,
    mut wakeups: mpsc::Receiver<()>,
    mut rest: mpsc::Receiver<Result<Bytes, BodyError>>,
    frames: mpsc::UnboundedSender<Bytes>,
) {
    while wakeups.recv().await.is_some() {
        let mut frame = BytesMut::new();
        let more = match rest.recv().await {
            Some(Ok(chunk)) => {
                protocol::encode(&ToWorker::Body { id, chunk: &chunk, more: true }, &mut frame);
                true
            }
            None => {
                protocol::encode(&ToWorker::Body { id, chunk: b"", more: false }, &mut frame);
                false
            }
            Some(Err(BodyError)) => {
                protocol::encode(&ToWorker::Cancel { id }, &mut frame);
                false
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
        Some(s) => match s.signal().map(nix::sys::signal::Signal::try_from) {
            Some(Ok(sig)) => format!("killed by signal {} ({sig})", sig as i32),
            Some(Err(_)) | None => format!("{s}"),
        },
        None => "exit status unknown".into(),
    }
}
