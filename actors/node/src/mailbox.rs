//! A small bounded queue with blocking (timeout) and async receive, for a node's inbox and
//! its pending calls: main loops are often not async, callers sometimes are.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

#[derive(Debug)]
pub(crate) struct Mailbox<T> {
    queue: Mutex<VecDeque<T>>,
    cv: Condvar,
    notify: Notify,
    capacity: usize,
}

impl<T> Mailbox<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
            notify: Notify::new(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `item`, or give it back if the queue is full.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        {
            let mut q = self.lock();
            if q.len() >= self.capacity {
                return Err(item);
            }
            q.push_back(item);
        }
        self.cv.notify_one();
        self.notify.notify_one();
        Ok(())
    }

    /// Whether an item is waiting.
    pub(crate) fn has_items(&self) -> bool {
        !self.lock().is_empty()
    }

    pub(crate) fn try_recv(&self) -> Option<T> {
        self.lock().pop_front()
    }

    /// Wait up to `timeout` for an item.
    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut q = self.lock();
        loop {
            if let Some(item) = q.pop_front() {
                return Some(item);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            q = self
                .cv
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Wait for an item.
    pub(crate) async fn recv(&self) -> T {
        loop {
            let notified = self.notify.notified();
            if let Some(item) = self.try_recv() {
                return item;
            }
            notified.await;
        }
    }
}
