//! One event loop: a node waits for everything at once — messages and calls, returned
//! messages, new samples on the streams it reads (and a stream it waits for appearing), a
//! shutdown request, a deadline — and wakes for whichever comes first, from a plain blocking
//! loop ([`Events::next`]) or from async code ([`Events::next_async`]). No poll timeouts.
//!
//! ```no_run
//! # fn demo(node: &syncra_node::Node) -> Result<(), syncra_node::StreamError> {
//! use std::time::{Duration, Instant};
//! use syncra_node::events::NodeEvent;
//! use syncra_node::world::SceneSnapshot;
//!
//! let mut scenes = node.subscribe::<SceneSnapshot>("world/main/scene")?;
//! let mut events = node.events();
//! let scene_key = events.watch(&scenes);
//! let mut next_frame = Instant::now();
//! loop {
//!     match events.next(Some(next_frame)) {
//!         NodeEvent::Stream(key) if key == scene_key => {
//!             while let Some(scene) = scenes.try_recv()? { /* use scene.value */ }
//!         }
//!         NodeEvent::Message(incoming) => { /* answer or act */ }
//!         NodeEvent::Deadline => next_frame += Duration::from_millis(16),
//!         NodeEvent::Shutdown => break,
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Under the hood: one epoll set holds the node's loop bell (an eventfd rung whenever a
//! message, a returned message, a stream push or a shutdown request arrives) and the doorbell
//! of every watched stream, which the producer rings only while the loop waits
//! ([`syncra_protocol::ring::ReaderWaker`]). While it waits, the loop keeps the node's
//! heartbeat: a node waiting for events is not hung.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use syncra_protocol::ring::ReaderWaker;

use crate::messaging::{Incoming, Returned};
use crate::streams::Pushes;
use crate::{Node, Shared};

/// Something a node's event loop woke for.
#[derive(Debug)]
pub enum NodeEvent {
    /// A message or call from another node.
    Message(Incoming),
    /// A message this node sent came back undelivered.
    Returned(Returned),
    /// The watched stream `key` has something for its consumer: new samples, or — for a
    /// consumer subscribed before its stream existed — the stream itself (the consumer attaches
    /// on its next read), or a refusal to read with that error.
    Stream(StreamKey),
    /// The runtime (or SIGTERM/SIGINT) asked the node to stop: finish up and return.
    Shutdown,
    /// The deadline given to [`Events::next`] passed.
    Deadline,
}

/// A watched stream, as [`Events::watch`] named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey(usize);

/// What a consumer shares with the event loops that watch it.
#[derive(Debug, Default)]
pub(crate) struct WatchState {
    /// The attached reader's waker.
    pub(crate) waker: Option<ReaderWaker>,
    /// A pending consumer's push mailbox (the stream, or its refusal, arrives there).
    pub(crate) pushes: Option<Pushes>,
}

/// What an event loop holds of a consumer it watches.
#[derive(Debug, Clone)]
pub struct WatchHandle(pub(crate) Arc<Mutex<WatchState>>);

/// Something an event loop can watch: a stream consumer.
pub trait Watch {
    /// The consumer's handle for event loops.
    fn watch_handle(&self) -> WatchHandle;
}

struct Watched {
    key: StreamKey,
    state: Arc<Mutex<WatchState>>,
    /// Whether its doorbell is in the epoll set.
    registered: bool,
}

/// A node's event loop ([`Node::events`]). One per node at a time: two loops would take each
/// other's wakeups.
pub struct Events {
    shared: Arc<Shared>,
    epoll: OwnedFd,
    watched: Vec<Watched>,
    next_key: usize,
    /// Where the fairness rotation starts next time.
    turn: usize,
    /// The last event returned was the deadline (a due deadline and ready events then take
    /// turns, so neither starves the other).
    deadline_last: bool,
    beat_interval: Duration,
    page: Option<Arc<syncra_protocol::page::NodePage>>,
    async_fd: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("watched", &self.watched.len())
            .finish()
    }
}

/// The epoll data of the loop bell (watched streams use their key + 1).
const LOOP_BELL: u64 = 0;

/// A fresh loop bell: a non-blocking eventfd.
pub(crate) fn loop_bell() -> std::io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?)
}

fn lock(m: &Mutex<WatchState>) -> std::sync::MutexGuard<'_, WatchState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    /// This node's event loop: wait for messages, returned messages, watched streams,
    /// shutdown and deadlines at once ([`Events::next`]).
    pub fn events(&self) -> Events {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll_create1");
        epoll::add(
            &epoll,
            self.shared.loop_bell.as_fd(),
            epoll::EventData::new_u64(LOOP_BELL),
            epoll::EventFlags::IN,
        )
        .expect("adding the loop bell to a fresh epoll set");
        Events {
            shared: self.shared.clone(),
            epoll,
            watched: Vec::new(),
            next_key: 0,
            turn: 0,
            deadline_last: false,
            beat_interval: self.beat_interval,
            page: self.page.clone(),
            async_fd: None,
        }
    }
}

impl Events {
    /// Watch `consumer`: [`NodeEvent::Stream`] with the returned key whenever it has
    /// something to read. A consumer that is dropped is no longer watched.
    pub fn watch(&mut self, consumer: &impl Watch) -> StreamKey {
        let key = StreamKey(self.next_key);
        self.next_key += 1;
        self.watched.push(Watched {
            key,
            state: consumer.watch_handle().0,
            registered: false,
        });
        key
    }

    /// The next event, waiting until `deadline` (`None`: as long as it takes). Keeps the
    /// node's heartbeat while it waits.
    pub fn next(&mut self, deadline: Option<Instant>) -> NodeEvent {
        loop {
            let wake_at = match self.before_wait(deadline) {
                Ok(Some(at)) => at,
                Ok(None) => continue,
                Err(ev) => return ev,
            };
            let left = wake_at.saturating_duration_since(Instant::now());
            let timeout = rustix::time::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            const MAX_REPORTED: usize = 8;
            let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); MAX_REPORTED];
            match epoll::wait(&self.epoll, &mut events[..], Some(&timeout)) {
                // Only what rang is drained: one read less on the way to the sample. A full
                // report may have left some out: then everything is.
                Ok((reported, _)) if reported.len() < MAX_REPORTED => self.finish_rang(reported),
                _ => self.finish(),
            }
            self.beat_if_due(wake_at);
        }
    }

    /// [`Events::next`] for async code.
    pub async fn next_async(&mut self, deadline: Option<Instant>) -> NodeEvent {
        loop {
            let wake_at = match self.before_wait(deadline) {
                Ok(Some(at)) => at,
                Ok(None) => continue,
                Err(ev) => return ev,
            };
            if self.async_fd.is_none() {
                let fd = self.epoll.try_clone().expect("duplicating the epoll fd");
                // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, open until it is dropped.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        fd,
                        tokio::io::Interest::READABLE,
                    )
                };
                match registered {
                    Ok(afd) => self.async_fd = Some(afd),
                    Err(e) => {
                        tracing::warn!(error = %e, "no async event loop outside a tokio runtime; waiting blocking");
                        self.finish();
                        return self.next(deadline);
                    }
                }
            }
            let afd = self.async_fd.as_ref().expect("set above");
            let woke = tokio::time::timeout_at(wake_at.into(), afd.readable()).await;
            if let Ok(Ok(mut guard)) = woke {
                guard.clear_ready();
            }
            self.finish();
            self.beat_if_due(wake_at);
        }
    }

    /// Before waiting: `Err(event)` if one is ready now (or the deadline passed); `Ok(None)` if
    /// something arrived while the doorbells were armed (look again); `Ok(Some(at))`: wait
    /// until `at` at the latest.
    fn before_wait(&mut self, deadline: Option<Instant>) -> Result<Option<Instant>, NodeEvent> {
        let now = Instant::now();
        let due = deadline.is_some_and(|d| d <= now);
        // A due deadline goes first unless it went last: a stream that always has something
        // (or a flood of messages) cannot hold the ticks off, nor can ticks that overrun
        // their period hold the events off.
        if due && !self.deadline_last && !self.shutdown_pending() {
            self.deadline_last = true;
            return Err(NodeEvent::Deadline);
        }
        if let Some(ev) = self.ready() {
            self.deadline_last = false;
            return Err(ev);
        }
        if due {
            self.deadline_last = true;
            return Err(NodeEvent::Deadline);
        }
        if !self.prepare() {
            return Ok(None);
        }
        Ok(Some(self.wake_at(deadline, now)))
    }

    /// An event that is ready now, without waiting: shutdown first, then messages, returned
    /// messages and streams in turn (so none starves the others).
    fn shutdown_pending(&self) -> bool {
        self.shared
            .shutdown
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn ready(&mut self) -> Option<NodeEvent> {
        if self.shutdown_pending() {
            return Some(NodeEvent::Shutdown);
        }
        // Consumers that were dropped are watched no more.
        self.watched.retain(|w| Arc::strong_count(&w.state) > 1);
        let sources = self.watched.len() + 2;
        for i in 0..sources {
            let k = (self.turn + i) % sources;
            let ev = match k {
                0 => self.shared.inbox.try_recv().map(NodeEvent::Message),
                1 => self.shared.returned.try_recv().map(NodeEvent::Returned),
                n => {
                    let w = &self.watched[n - 2];
                    let st = lock(&w.state);
                    let has = match (&st.waker, &st.pushes) {
                        (Some(waker), _) => waker.has_message(),
                        (None, Some(pushes)) => pushes.has_items(),
                        (None, None) => false,
                    };
                    has.then_some(NodeEvent::Stream(w.key))
                }
            };
            if ev.is_some() {
                self.turn = (k + 1) % sources;
                return ev;
            }
        }
        None
    }

    /// Arm every watched stream's doorbell; false if something arrived meanwhile.
    fn prepare(&mut self) -> bool {
        for w in &mut self.watched {
            let st = lock(&w.state);
            let Some(waker) = &st.waker else { continue };
            if !w.registered {
                let data = epoll::EventData::new_u64(w.key.0 as u64 + 1);
                if epoll::add(&self.epoll, waker.bell(), data, epoll::EventFlags::IN).is_ok() {
                    w.registered = true;
                }
            }
            if !waker.prepare_wait() {
                drop(st);
                self.finish();
                return false;
            }
        }
        true
    }

    /// After waking: empty the loop bell and every doorbell.
    fn finish(&self) {
        syncra_protocol::ring::drain(self.shared.loop_bell.as_fd());
        for w in &self.watched {
            if let Some(waker) = &lock(&w.state).waker {
                waker.finish_wait();
            }
        }
    }

    /// After waking with the epoll set's report: empty the bells that `rang` (their epoll
    /// data), and clear the waiting flag of every doorbell.
    fn finish_rang(&self, rang: &[epoll::Event]) {
        let rang = |data: u64| rang.iter().any(|e| e.data.u64() == data);
        if rang(LOOP_BELL) {
            syncra_protocol::ring::drain(self.shared.loop_bell.as_fd());
        }
        for w in &self.watched {
            if let Some(waker) = &lock(&w.state).waker {
                if rang(w.key.0 as u64 + 1) {
                    waker.finish_wait();
                } else {
                    waker.stop_waiting();
                }
            }
        }
    }

    /// When to wake at the latest: the deadline, or the next heartbeat.
    fn wake_at(&self, deadline: Option<Instant>, now: Instant) -> Instant {
        let beat = now + self.beat_interval;
        deadline.map_or(beat, |d| d.min(beat))
    }

    /// Beat if the wait ran to the heartbeat (the loop is waiting, not hung).
    fn beat_if_due(&self, wake_at: Instant) {
        if Instant::now() >= wake_at
            && let Some(page) = &self.page
        {
            page.vitals().beat(None);
        }
    }
}
