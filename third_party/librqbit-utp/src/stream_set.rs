//! The streams' state machines, run inside the dispatcher's task (btfs's change to the crate).
//!
//! The dispatcher puts each stream's packets in its [`Inbox`] and, once it has taken the
//! datagrams waiting in the transport, polls every stream that got some right there: one poll,
//! and one ACK, per stream per batch, the way libtorrent handles packets where they land. A
//! task per stream, fed through a channel, would be woken for every packet or two, on whichever
//! worker thread took it, each poll going through the runtime's scheduler.
//!
//! A stream the dispatcher fed is polled without anyone waking it. Anything else that concerns
//! a stream (its reader or writer, its timer, the socket becoming writable) wakes it through its
//! own waker, which queues it here and wakes the dispatcher's task.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use parking_lot::Mutex;
use tracing::{debug, trace};

use crate::{Error, message::UtpMessage};

/// A stream's state machine: runs until the stream is closed.
pub(crate) type StreamFuture = Pin<Box<dyn Future<Output = crate::Result<()>> + Send>>;

/// Where a stream's packets wait for it: filled by the dispatcher, drained by the stream, both
/// within the dispatcher's task (the lock is never contended there).
#[derive(Default)]
pub(crate) struct Inbox {
    queue: Mutex<VecDeque<UtpMessage>>,
    /// The dispatcher no longer routes packets here.
    sender_gone: AtomicBool,
    /// The stream is gone: packets for it are not kept.
    receiver_gone: AtomicBool,
}

/// The dispatcher's side of an [`Inbox`]; dropping it tells the stream no more will come.
pub(crate) struct InboxSender(Arc<Inbox>);

/// The stream's side of an [`Inbox`].
pub(crate) struct InboxReceiver(Arc<Inbox>);

pub(crate) fn inbox() -> (InboxSender, InboxReceiver) {
    let inbox = Arc::new(Inbox::default());
    (InboxSender(inbox.clone()), InboxReceiver(inbox))
}

impl InboxSender {
    /// Queues a packet; the caller sees to it that the stream is polled. Gives the packet back
    /// if the stream is gone.
    pub fn send(&self, msg: UtpMessage) -> Result<(), UtpMessage> {
        if self.0.receiver_gone.load(Ordering::Relaxed) {
            return Err(msg);
        }
        self.0.queue.lock().push_back(msg);
        Ok(())
    }
}

impl Drop for InboxSender {
    fn drop(&mut self) {
        self.0.sender_gone.store(true, Ordering::Relaxed);
    }
}

impl InboxReceiver {
    /// Everything queued so far, in arrival order (swapped with `into`, which should be empty,
    /// so that neither side allocates per batch); `Err` once nothing is queued and nothing more
    /// will come.
    pub fn take_all(&self, into: &mut VecDeque<UtpMessage>) -> Result<(), ()> {
        let mut q = self.0.queue.lock();
        if q.is_empty() && self.0.sender_gone.load(Ordering::Relaxed) {
            return Err(());
        }
        std::mem::swap(&mut *q, into);
        Ok(())
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.queue.lock().is_empty()
    }
}

impl Drop for InboxReceiver {
    fn drop(&mut self) {
        self.0.receiver_gone.store(true, Ordering::Relaxed);
        self.0.queue.lock().clear();
    }
}

/// Streams woken from outside the dispatcher's poll, and who to wake for them.
#[derive(Default)]
struct Woken {
    slots: Vec<usize>,
    /// Set while the dispatcher runs streams: it looks at `slots` again before it stops.
    running: bool,
    dispatcher: Option<Waker>,
}

struct SlotWaker {
    slot: usize,
    queued: AtomicBool,
    woken: Arc<Mutex<Woken>>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut w = self.woken.lock();
        w.slots.push(self.slot);
        let dispatcher = if w.running { None } else { w.dispatcher.take() };
        drop(w);
        if let Some(d) = dispatcher {
            d.wake();
        }
    }
}

struct Slot {
    fut: StreamFuture,
    waker: Arc<SlotWaker>,
    span: tracing::Span,
}

/// Every live stream of a socket, polled by the dispatcher (see the module doc).
#[derive(Default)]
pub(crate) struct StreamSet {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    woken: Arc<Mutex<Woken>>,
    /// Streams the dispatcher itself has work for (packets), polled at its next `poll`.
    marked: Vec<usize>,
    /// Reused for each round of polls.
    round: Vec<usize>,
}

/// Rounds of polls per `poll` before the dispatcher lets other tasks run (a stream that keeps
/// waking itself must not hold the thread).
const MAX_ROUNDS: usize = 16;

impl StreamSet {
    /// Adds a stream, to be polled at the next [`StreamSet::poll`]; returns its slot.
    pub fn insert(&mut self, fut: StreamFuture, span: tracing::Span) -> usize {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let waker = Arc::new(SlotWaker {
            slot,
            queued: AtomicBool::new(false),
            woken: self.woken.clone(),
        });
        self.slots[slot] = Some(Slot { fut, waker, span });
        self.marked.push(slot);
        slot
    }

    /// The stream in `slot` has new packets: poll it at the next [`StreamSet::poll`].
    pub fn mark(&mut self, slot: usize) {
        self.marked.push(slot);
    }

    /// Polls every stream that was marked or woken, until none is; streams that finish are
    /// removed. `cx` is woken when a stream is woken from outside.
    pub fn poll(&mut self, cx: &mut Context<'_>) {
        for _ in 0..MAX_ROUNDS {
            {
                let mut w = self.woken.lock();
                self.round.append(&mut w.slots);
                self.round.append(&mut self.marked);
                if self.round.is_empty() {
                    w.running = false;
                    match &mut w.dispatcher {
                        Some(d) => d.clone_from(cx.waker()),
                        None => w.dispatcher = Some(cx.waker().clone()),
                    }
                    return;
                }
                w.running = true;
            }
            self.round.sort_unstable();
            self.round.dedup();
            let round = std::mem::take(&mut self.round);
            for &slot in &round {
                self.poll_slot(slot);
            }
            self.round = round;
            self.round.clear();
        }
        // More to do: let other tasks run first.
        self.woken.lock().running = false;
        cx.waker().wake_by_ref();
    }

    fn poll_slot(&mut self, slot: usize) {
        let Some(Some(s)) = self.slots.get_mut(slot) else {
            return;
        };
        s.waker.queued.store(false, Ordering::Release);
        let waker = Waker::from(s.waker.clone());
        let mut cx = Context::from_waker(&waker);
        let done = {
            let _g = s.span.enter();
            match s.fut.as_mut().poll(&mut cx) {
                Poll::Pending => false,
                Poll::Ready(Ok(())) => {
                    trace!("finished");
                    true
                }
                Poll::Ready(Err(Error::TaskCancelled)) => {
                    trace!("task cancelled");
                    true
                }
                Poll::Ready(Err(e)) => {
                    debug!("finished with error: {e:#}");
                    true
                }
            }
        };
        if done {
            self.slots[slot] = None;
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts its polls; ends when told to; hands out the waker it was polled with.
    struct Probe {
        polls: Arc<AtomicUsize>,
        end: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = crate::Result<()>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock() = Some(cx.waker().clone());
            if self.end.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    struct Handle {
        polls: Arc<AtomicUsize>,
        end: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    fn probe() -> (StreamFuture, Handle) {
        let h = Handle {
            polls: Default::default(),
            end: Default::default(),
            waker: Default::default(),
        };
        let p = Probe {
            polls: h.polls.clone(),
            end: h.end.clone(),
            waker: h.waker.clone(),
        };
        (Box::pin(p), h)
    }

    #[derive(Default)]
    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_stream_is_polled_when_added_and_when_the_dispatcher_marks_it() {
        let dispatcher = Arc::new(CountWakes::default());
        let waker = Waker::from(dispatcher.clone());
        let mut cx = Context::from_waker(&waker);
        let mut set = StreamSet::default();
        let (fut, a) = probe();
        let slot = set.insert(fut, tracing::Span::none());
        set.poll(&mut cx);
        assert_eq!(a.polls.load(Ordering::SeqCst), 1, "polled once added");
        set.poll(&mut cx);
        assert_eq!(a.polls.load(Ordering::SeqCst), 1, "not again without work");
        set.mark(slot);
        set.mark(slot);
        set.poll(&mut cx);
        assert_eq!(
            a.polls.load(Ordering::SeqCst),
            2,
            "once per batch, however marked"
        );
        assert_eq!(
            dispatcher.0.load(Ordering::SeqCst),
            0,
            "no wake for its own work"
        );
    }

    #[test]
    fn a_stream_woken_from_outside_wakes_the_dispatcher_once_and_is_polled() {
        let dispatcher = Arc::new(CountWakes::default());
        let waker = Waker::from(dispatcher.clone());
        let mut cx = Context::from_waker(&waker);
        let mut set = StreamSet::default();
        let (fut, a) = probe();
        let (fut_b, b) = probe();
        set.insert(fut, tracing::Span::none());
        set.insert(fut_b, tracing::Span::none());
        set.poll(&mut cx);
        let stream_waker = a.waker.lock().clone().unwrap();
        std::thread::spawn(move || {
            stream_waker.wake_by_ref();
            stream_waker.wake();
        })
        .join()
        .unwrap();
        assert_eq!(dispatcher.0.load(Ordering::SeqCst), 1);
        set.poll(&mut cx);
        assert_eq!(a.polls.load(Ordering::SeqCst), 2);
        assert_eq!(b.polls.load(Ordering::SeqCst), 1, "the other was not woken");
    }

    #[test]
    fn a_finished_stream_leaves_and_its_slot_is_reused() {
        let waker = Waker::from(Arc::new(CountWakes::default()));
        let mut cx = Context::from_waker(&waker);
        let mut set = StreamSet::default();
        let (fut, a) = probe();
        let slot = set.insert(fut, tracing::Span::none());
        a.end.store(true, Ordering::SeqCst);
        set.poll(&mut cx);
        let stale = a.waker.lock().clone().unwrap();
        let (fut_b, b) = probe();
        assert_eq!(set.insert(fut_b, tracing::Span::none()), slot);
        set.poll(&mut cx);
        // The gone stream's waker at worst polls the new one once more, which futures allow.
        stale.wake();
        set.poll(&mut cx);
        assert_eq!(
            a.polls.load(Ordering::SeqCst),
            1,
            "never polled after it finished"
        );
        assert_eq!(b.polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_inbox_ends_once_drained_after_its_sender_is_gone() {
        let (tx, rx) = inbox();
        let msg = UtpMessage::default();
        tx.send(msg.clone()).unwrap();
        drop(tx);
        let mut got = VecDeque::new();
        rx.take_all(&mut got).unwrap();
        assert_eq!(got.len(), 1, "what was sent still arrives");
        got.clear();
        assert!(rx.take_all(&mut got).is_err());

        let (tx, rx) = inbox();
        drop(rx);
        assert!(tx.send(msg).is_err(), "a gone stream takes no packets");
    }
}
