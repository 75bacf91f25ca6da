//! The spool: what sits between normalise and the sink. In this version it is a bounded
//! in-memory queue: it owns back-pressure (a full spool stops normalise, which stops reading
//! the broker) but not durability, so acknowledgements wait for the store. A durable spool
//! keeps the same two halves.

use tokio::sync::mpsc;

use crate::ack::Ack;

/// One message's worth of encoded readings on its way to the store.
#[derive(Debug)]
pub struct Envelope {
    /// Line protocol, one line per reading, precision ms. May be empty (all rejected).
    pub lines: String,
    pub readings: usize,
    pub topic: String,
    pub ack: Ack,
}

pub fn memory(capacity: usize) -> (SpoolWriter, SpoolReader) {
    let (tx, rx) = mpsc::channel(capacity);
    (SpoolWriter { tx }, SpoolReader { rx })
}

#[derive(Debug, Clone)]
pub struct SpoolWriter {
    tx: mpsc::Sender<Envelope>,
}

impl SpoolWriter {
    /// Waits while the spool is full. Fails only when the reader is gone.
    pub async fn push(&self, envelope: Envelope) -> Result<(), Envelope> {
        self.tx.send(envelope).await.map_err(|e| e.0)
    }

    pub fn is_full(&self) -> bool {
        self.tx.capacity() == 0
    }
}

#[derive(Debug)]
pub struct SpoolReader {
    rx: mpsc::Receiver<Envelope>,
}

impl SpoolReader {
    /// The next envelope; `None` once every writer is dropped and the spool is empty.
    pub async fn next(&mut self) -> Option<Envelope> {
        self.rx.recv().await
    }
}
