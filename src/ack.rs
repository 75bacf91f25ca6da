//! Acknowledgements flowing back to the source. An `Ack` is released once the stage that owns
//! durability has accepted all of a message's readings; dropping it unreleased means "not
//! delivered", and the broker redelivers the message to our persistent session.

use std::fmt;
use std::sync::Arc;

/// Whoever can acknowledge a message to its broker (the MQTT source).
pub trait Acker: Send + Sync {
    fn ack(&self, token: AckToken);
}

/// What the source needs to acknowledge one message; opaque to the other stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub pkid: u16,
    pub qos: u8,
    /// The connection the message came in on (its packet id means nothing on another).
    pub generation: u64,
}

pub struct Ack {
    token: AckToken,
    acker: Option<Arc<dyn Acker>>,
}

impl Ack {
    pub fn new(token: AckToken, acker: Arc<dyn Acker>) -> Self {
        Ack {
            token,
            acker: Some(acker),
        }
    }

    /// The message is durable: tell the broker.
    pub fn release(mut self) {
        if let Some(acker) = self.acker.take() {
            acker.ack(self.token);
        }
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ack(pkid {})", self.token.pkid)
    }
}
