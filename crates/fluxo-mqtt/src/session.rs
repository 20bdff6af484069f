//! Sessions by client id, and the handover of a session from one
//! connection to the next.
//!
//! A session's state sits behind an async mutex that its connection holds
//! for as long as it lives. A second CONNECT with the same client id kicks
//! the first connection, then waits for that lock: the old connection's
//! last writes (read positions, in-flight deliveries) are done before the
//! new one reads them. A generation number per claim keeps a connection
//! that was taken over from removing its successor's session when it ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::packet::OutPublish;

/// What a session keeps between packets, and between connections when the
/// client asked for a persistent session.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Filter → QoS granted (0 or 1).
    pub subscriptions: BTreeMap<String, u8>,
    /// (fluxo topic, partition) → the next offset to deliver. A position
    /// moves only when the connection has taken the delivery, so a
    /// reconnect resumes exactly after what was sent.
    pub positions: HashMap<(String, i32), i64>,
    /// QoS 1 deliveries the client has not acknowledged, by packet id;
    /// sent again (DUP) when a persistent session reconnects.
    pub inflight: BTreeMap<u16, OutPublish>,
    /// QoS 2 packet ids whose PUBLISH is written and whose PUBREL has not
    /// come: a PUBLISH repeated with one of them is not written again.
    pub incoming_qos2: HashSet<u16>,
    last_packet_id: u16,
}

impl SessionState {
    /// A packet id no in-flight delivery uses; None when all 65535 are.
    pub fn next_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.last_packet_id = self.last_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.last_packet_id) {
                return Some(self.last_packet_id);
            }
        }
        None
    }
}

struct Entry {
    state: Arc<tokio::sync::Mutex<SessionState>>,
    generation: u64,
    /// Tells the connection holding the session to close; None when no
    /// connection holds it.
    kick: Option<oneshot::Sender<()>>,
    /// Whether the state outlives its connection.
    keep: bool,
    /// How long a kept session waits for its client (None: until the
    /// server stops), and since when it waits.
    expiry: Option<Duration>,
    released_at: Option<Instant>,
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        match (self.expiry, self.released_at) {
            (Some(expiry), Some(released)) => now.duration_since(released) >= expiry,
            _ => false,
        }
    }
}

/// A connection's hold on a session.
pub struct Claim {
    pub state: Arc<tokio::sync::Mutex<SessionState>>,
    pub generation: u64,
    /// Fires when a newer connection takes the session over.
    pub kicked: oneshot::Receiver<()>,
    /// CONNACK's session present flag.
    pub session_present: bool,
}

#[derive(Default)]
pub struct Sessions {
    entries: Mutex<HashMap<String, Entry>>,
    generations: Mutex<u64>,
}

impl Sessions {
    /// Takes the session of `client_id` for a new connection, kicking the
    /// connection that holds it. With `clean_start`, or when the previous
    /// state was not to be kept, the session starts empty. `keep`: Some
    /// when the state outlives this connection, with how long it waits
    /// for the client to come back (None inside: for ever).
    pub fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
        keep: Option<Option<Duration>>,
    ) -> Claim {
        let generation = {
            let mut g = self.generations.lock();
            *g += 1;
            *g
        };
        let (kick, kicked) = oneshot::channel();
        let mut entries = self.entries.lock();
        let previous = entries.remove(client_id);
        let mut resumed = None;
        if let Some(mut previous) = previous {
            if let Some(kick) = previous.kick.take() {
                // The old connection may have ended already: then nobody
                // listens, which is fine.
                let _ = kick.send(());
            }
            if !clean_start && previous.keep && !previous.expired(Instant::now()) {
                resumed = Some(previous.state);
            }
        }
        let session_present = resumed.is_some();
        let state = resumed.unwrap_or_default();
        entries.insert(
            client_id.to_string(),
            Entry {
                state: state.clone(),
                generation,
                kick: Some(kick),
                keep: keep.is_some(),
                expiry: keep.flatten(),
                released_at: None,
            },
        );
        Claim {
            state,
            generation,
            kicked,
            session_present,
        }
    }

    /// Called when the connection of claim `generation` ends: a kept
    /// session waits for its client, another is forgotten. A connection
    /// that was taken over changes nothing.
    pub fn release(&self, client_id: &str, generation: u64) {
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(client_id) else {
            return;
        };
        if entry.generation != generation {
            return;
        }
        if entry.keep {
            entry.kick = None;
            entry.released_at = Some(Instant::now());
        } else {
            entries.remove(client_id);
        }
    }

    /// Forgets kept sessions whose client stayed away longer than their
    /// expiry interval (MQTT 5's Session Expiry Interval).
    pub fn expire(&self, now: Instant) {
        self.entries.lock().retain(|_, e| !e.expired(now));
    }

    /// Sessions known, connected or kept for a client's return.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOREVER: Option<Option<Duration>> = Some(None);

    #[tokio::test]
    async fn kept_sessions_expire_after_their_interval() {
        let sessions = Sessions::default();
        let c = sessions.claim("dev", false, Some(Some(Duration::from_secs(60))));
        sessions.release("dev", c.generation);
        let forever = sessions.claim("old-device", false, FOREVER);
        sessions.release("old-device", forever.generation);
        sessions.expire(Instant::now() + Duration::from_secs(30));
        assert_eq!(sessions.len(), 2, "within the interval");
        sessions.expire(Instant::now() + Duration::from_secs(61));
        assert_eq!(sessions.len(), 1, "only the session without expiry is left");
        assert!(!sessions.claim("dev", false, FOREVER).session_present);
        // A connected session never expires.
        let _connected = sessions.claim("busy", false, Some(Some(Duration::ZERO)));
        sessions.expire(Instant::now() + Duration::from_secs(3600));
        assert!(sessions.claim("busy", false, FOREVER).session_present);
    }

    #[tokio::test]
    async fn a_second_connect_kicks_the_first_and_waits_for_its_state() {
        let sessions = Sessions::default();
        let mut first = sessions.claim("dev", false, FOREVER);
        assert!(!first.session_present);
        let mut held = first.state.clone().lock_owned().await;
        held.positions.insert(("t".into(), 0), 5);

        let second = sessions.claim("dev", false, FOREVER);
        assert!(second.session_present, "the kept state is resumed");
        assert!(
            first.kicked.try_recv().is_ok(),
            "the first connection is told to close"
        );
        assert!(
            second.state.clone().try_lock_owned().is_err(),
            "the state is still held by the first connection"
        );
        // The first connection makes its last write and lets go.
        held.positions.insert(("t".into(), 0), 7);
        drop(held);
        sessions.release("dev", first.generation);
        let state = second.state.clone().lock_owned().await;
        assert_eq!(state.positions[&("t".to_string(), 0)], 7);
        assert_eq!(
            sessions.len(),
            1,
            "the old connection's release left the session"
        );
    }

    #[tokio::test]
    async fn a_clean_start_drops_what_was_kept() {
        let sessions = Sessions::default();
        let first = sessions.claim("dev", false, FOREVER);
        first
            .state
            .lock()
            .await
            .subscriptions
            .insert("t/#".into(), 1);
        sessions.release("dev", first.generation);
        let clean = sessions.claim("dev", true, FOREVER);
        assert!(!clean.session_present);
        assert!(clean.state.lock().await.subscriptions.is_empty());
    }

    #[tokio::test]
    async fn sessions_not_kept_end_with_their_connection() {
        let sessions = Sessions::default();
        let c = sessions.claim("dev", true, None);
        sessions.release("dev", c.generation);
        assert!(sessions.is_empty());
        let again = sessions.claim("dev", false, FOREVER);
        assert!(!again.session_present);

        // A persistent client that reconnects finds its session.
        sessions.release("dev", again.generation);
        assert_eq!(sessions.len(), 1);
        assert!(sessions.claim("dev", false, FOREVER).session_present);
    }

    #[tokio::test]
    async fn a_not_kept_session_is_not_resumed_by_a_takeover() {
        let sessions = Sessions::default();
        let _clean = sessions.claim("dev", true, None);
        let next = sessions.claim("dev", false, FOREVER);
        assert!(!next.session_present);
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_zero() {
        let mut s = SessionState::default();
        assert_eq!(s.next_packet_id(), Some(1));
        s.inflight.insert(2, OutPublish::default());
        assert_eq!(s.next_packet_id(), Some(3));
        s.last_packet_id = u16::MAX;
        assert_eq!(s.next_packet_id(), Some(1), "wraps past zero");
        for id in 1..=u16::MAX {
            s.inflight.insert(id, OutPublish::default());
        }
        assert_eq!(s.next_packet_id(), None);
    }
}
