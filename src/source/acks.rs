//! PUBACKs on their way out: only on the connection their message came in on, in arrival
//! order, and never lost to a full request channel.
//!
//! - A connection generation is stamped on every message's token. After a reconnect, packet
//!   ids are the new connection's: a PUBACK for a message of an earlier connection could
//!   acknowledge a new message that reuses its id before that one is durable. Such acks are
//!   dropped; the broker redelivers the old message (a duplicate, never a loss).
//! - When the client's request channel is full, the PUBACK waits in a queue that is flushed
//!   in order (the source loop calls [`Acks::flush`] often), rather than being dropped and
//!   pinning the broker's inflight slot until the next reconnect.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::ack::{AckToken, Acker};
use crate::telemetry::Telemetry;

/// Queues a PUBACK on the connection without waiting (the MQTT client's request channel).
pub(crate) trait Puback: Send + Sync {
    fn try_ack(&self, pkid: u16) -> Result<(), String>;
}

pub(crate) struct Acks<C> {
    client: C,
    telemetry: Arc<Telemetry>,
    generation: AtomicU64,
    /// PUBACKs that found the request channel full, oldest first, with their generation.
    waiting: Mutex<VecDeque<(u64, u16)>>,
}

impl<C: Puback> Acks<C> {
    pub(crate) fn new(client: C, telemetry: Arc<Telemetry>) -> Self {
        Acks {
            client,
            telemetry,
            generation: AtomicU64::new(0),
            waiting: Mutex::new(VecDeque::new()),
        }
    }

    /// The generation to stamp on the tokens of messages received now.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A new connection: acknowledgements of earlier ones are void from now on.
    pub(crate) fn connected(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut w = self.lock();
        let stale = w.len();
        w.clear();
        drop(w);
        if stale > 0 {
            self.telemetry.stale_acks_dropped(stale);
        }
    }

    /// Sends what waits, in order, until the channel is full again.
    pub(crate) fn flush(&self) {
        let mut w = self.lock();
        let current = self.generation();
        while let Some(&(generation, pkid)) = w.front() {
            if generation != current {
                w.pop_front();
                self.telemetry.stale_acks_dropped(1);
                continue;
            }
            if self.client.try_ack(pkid).is_err() {
                return;
            }
            w.pop_front();
        }
    }

    pub(crate) fn waiting(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, u16)>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<C: Puback> Acker for Acks<C> {
    fn ack(&self, token: AckToken) {
        if token.qos == 0 {
            return;
        }
        if token.generation != self.generation() {
            self.telemetry.stale_acks_dropped(1);
            return;
        }
        let mut w = self.lock();
        // Behind others that wait: keep the order.
        if !w.is_empty() {
            w.push_back((token.generation, token.pkid));
            return;
        }
        if let Err(e) = self.client.try_ack(token.pkid) {
            self.telemetry.puback_deferred(token.pkid, &e);
            w.push_back((token.generation, token.pkid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `room` PUBACKs, then refuses until given more room.
    #[derive(Default)]
    struct Channel {
        room: Mutex<usize>,
        sent: Mutex<Vec<u16>>,
    }

    impl Puback for Arc<Channel> {
        fn try_ack(&self, pkid: u16) -> Result<(), String> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err("request channel full".into());
            }
            *room -= 1;
            self.sent.lock().unwrap().push(pkid);
            Ok(())
        }
    }

    fn token(pkid: u16, generation: u64) -> AckToken {
        AckToken {
            pkid,
            qos: 1,
            generation,
        }
    }

    #[test]
    fn a_full_channel_delays_acks_in_order_and_never_drops_them() {
        let ch = Arc::new(Channel::default());
        *ch.room.lock().unwrap() = 1;
        let acks = Acks::new(ch.clone(), Arc::default());
        acks.connected();
        let g = acks.generation();
        for pkid in [1, 2, 3, 4] {
            acks.ack(token(pkid, g));
        }
        assert_eq!(*ch.sent.lock().unwrap(), vec![1]);
        assert_eq!(acks.waiting(), 3);
        *ch.room.lock().unwrap() = 10;
        acks.ack(token(5, g));
        acks.flush();
        assert_eq!(*ch.sent.lock().unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(acks.waiting(), 0);
    }

    #[test]
    fn an_ack_of_an_earlier_connection_is_never_sent_on_a_new_one() {
        let ch = Arc::new(Channel::default());
        *ch.room.lock().unwrap() = 0;
        let acks = Acks::new(ch.clone(), Arc::default());
        acks.connected();
        let old = acks.generation();
        acks.ack(token(7, old));
        assert_eq!(acks.waiting(), 1);
        // Reconnect: packet id 7 now belongs to another message.
        acks.connected();
        *ch.room.lock().unwrap() = 10;
        acks.ack(token(8, old));
        acks.flush();
        assert!(
            ch.sent.lock().unwrap().is_empty(),
            "{:?}",
            ch.sent.lock().unwrap()
        );
        acks.ack(token(7, acks.generation()));
        assert_eq!(*ch.sent.lock().unwrap(), vec![7]);
    }
}
