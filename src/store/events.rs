//! The in-process fan-out of committed events to live readers (the SSE streams). A store
//! publishes an event only once the transaction that wrote it has committed, so subscribers
//! never see an event that could still be rolled back. The hub keeps nothing: a reader that
//! subscribes late, or falls behind, reads what it missed from the store.

use tokio::sync::broadcast;

use super::Event;

/// Events a subscriber may fall behind by before it is told it lagged.
const CAPACITY: usize = 4096;

/// A cheap handle to one fan-out: clones publish to and subscribe on the same one.
#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Event>,
}

impl EventHub {
    pub fn new() -> Self {
        Self { sender: broadcast::channel(CAPACITY).0 }
    }

    /// Sends a committed event to every current subscriber. Call it after the commit, never
    /// before.
    pub fn publish(&self, event: Event) {
        // No subscriber is fine: the event is in the store for later readers.
        let _ = self.sender.send(event);
    }

    /// Every event published from now on, of every job.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}
