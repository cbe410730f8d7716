//! Taking over the sessions and the queue of a node that left the cluster
//! without letting them go (killed, or cut off from NATS).
//!
//! Its persistent sessions are in the cluster's store, but the QoS 1 and 2
//! messages other nodes sent it after its last store write wait in its queue
//! ([`crate::queue`]), and more keep coming while its filters stay announced.
//! So when a node finds the holder of a session it acquires gone (no
//! responder on the holder's release subject), one node of the cluster adopts
//! the departed one, under a lock (`adopt.<node>` in the owners bucket,
//! created with compare-and-set; an adopter that is itself gone leaves a stale
//! lock that the next one takes over):
//!
//! 1. its queue: a consumer of the adopter's from the departed consumer's
//!    acknowledgement floor, the departed consumer deleted;
//! 2. its sessions: every client the sessions bucket names it for, claimed
//!    (compare-and-set) and read from the cluster's store, restored into the
//!    adopter's core ([`Inbound::Adopted`](crate::Inbound::Adopted)), whose
//!    subscriptions the adopter announces as its own;
//! 3. its filters withdrawn from the interest bucket (a second after the
//!    adopter announced the same ones), so that nothing more goes to its
//!    queue; the queue is read to its end into the adopted sessions (a message
//!    that reached both queues in between is taken once, by its id);
//! 4. then the adopted consumer and the lock are deleted, and only then are
//!    the adopted sessions let go to the nodes that asked for them meanwhile,
//!    so that every message of the departed queue is in a session before
//!    another node reads it.
//!
//! A node that acquires one of the departed node's sessions while another
//! adopts it gives its claim back and asks the adopter to take that session
//! too (`<prefix>.adopt.<adopter>`), then acquires it from the adopter as from
//! any live node. A departed node that starts again waits until its adoption
//! is over.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use mqtt_proto::MqttString;

use crate::state::{self, session_key, StateError};

/// The lock's key of `node`'s adoption in the owners bucket.
pub(crate) fn lock_key(node: &str) -> String {
    format!("adopt.{}", session_key(node.as_bytes()))
}

/// The subject a node answers on while it runs (`<prefix>.node.<node>`).
pub(crate) fn presence_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.node.{}", session_key(node.as_bytes()))
}

/// The subject an adopter takes more sessions of its departed node on.
pub(crate) fn adopt_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.adopt.{}", session_key(node.as_bytes()))
}

/// What a liveness question carries (a node that starts asks with an empty
/// payload whether its name is in use).
pub(crate) const ALIVE: &[u8] = b"alive?";

/// Whether `node` runs: it answers on its presence subject. No answer within
/// a second counts as running (NATS routes to a node that just died for a
/// moment; "no responders" is what says it is gone).
pub(crate) async fn alive(client: &async_nats::Client, prefix: &str, node: &str) -> bool {
    let asked = client.request(presence_subject(prefix, node), Bytes::from_static(ALIVE));
    match tokio::time::timeout(Duration::from_secs(1), asked).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() != async_nats::client::RequestErrorKind::NoResponders,
        Err(_) => true,
    }
}

/// Who adopts a departed node, as one acquisition found it.
pub(crate) enum Gate {
    /// This node took the lock: it adopts.
    Adopt,
    /// This node adopts that node already.
    Mine,
    /// Another node adopts it, and took the session over: acquire it from
    /// that node.
    HandedTo,
}

/// A departed node's session, claimed by this node and read.
pub(crate) struct Adopted {
    pub(crate) key: String,
    pub(crate) client_id: MqttString,
    pub(crate) revision: u64,
    pub(crate) ops: Vec<broker_state::StoreOp>,
    pub(crate) marks: state::Marks,
}

fn failed(what: &str, e: &dyn core::fmt::Display) -> StateError {
    StateError(format!("{what}: {e}"))
}

/// Decides who adopts `node`, which left the session `key` behind (claimed
/// by this node at `revision`, when it found `node` gone only then): this
/// node if the lock is free or stale; otherwise the session goes to its
/// adopter (a claim of this node's back to `node`'s name first).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn gate(
    owners: &jetstream::kv::Store,
    sessions: &jetstream::kv::Store,
    client: &async_nats::Client,
    prefix: &str,
    me: &str,
    node: &str,
    key: &str,
    revision: Option<u64>,
) -> Result<Gate, StateError> {
    let lock = lock_key(node);
    for _ in 0..8 {
        // Another node that creates it at the same moment makes this fail
        // ("already exists" or "wrong last sequence"): the entry says who.
        let created = owners.create(&lock, Bytes::from(me.to_owned())).await;
        let Err(create_error) = created else {
            return Ok(Gate::Adopt);
        };
        let Some(entry) = owners
            .entry(&lock)
            .await
            .map_err(|e| failed("reading the adoption lock", &e))?
        else {
            tracing::debug!(error = %create_error, "taking the adoption lock; again");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if entry.operation != jetstream::kv::Operation::Put {
            continue;
        }
        let adopter = String::from_utf8_lossy(&entry.value).into_owned();
        if adopter == me {
            return Ok(Gate::Mine);
        }
        if !alive(client, prefix, &adopter).await {
            // Its adopter is gone too: this node takes the lock over.
            if owners
                .update(&lock, Bytes::from(me.to_owned()), entry.revision)
                .await
                .is_ok()
            {
                return Ok(Gate::Adopt);
            }
            continue;
        }
        // The adopter reads the departed queue into the sessions it holds:
        // this one goes to it, and comes here from it.
        if let Some(revision) = revision {
            if let Err(e) = sessions
                .update(key, Bytes::from(node.to_owned()), revision)
                .await
            {
                tracing::debug!(error = %e, "a claim changed while giving it to the adopter");
            }
        }
        let asked = client.request(adopt_subject(prefix, &adopter), Bytes::from(key.to_owned()));
        if let Err(e) = tokio::time::timeout(Duration::from_secs(2), asked).await {
            tracing::debug!(error = %e, adopter, "the adopter did not answer");
        }
        return Ok(Gate::HandedTo);
    }
    Err(StateError(format!(
        "the adoption lock of node {node:?} keeps changing"
    )))
}

/// Claims the sessions the sessions bucket names `node` for (all of them, or
/// the one of `only`), and reads them from the cluster's store.
pub(crate) async fn claim_sessions(
    sessions: &jetstream::kv::Store,
    state_kv: &jetstream::kv::Store,
    me: &str,
    node: &str,
    only: Option<&str>,
    patience: Duration,
) -> Result<Vec<Adopted>, StateError> {
    let entries = match only {
        Some(key) => sessions
            .entry(key)
            .await
            .map_err(|e| failed("reading a claim", &e))?
            .into_iter()
            .collect(),
        None => {
            crate::node::read_all(sessions, "sessions", patience)
                .await
                .map_err(|e| StateError(e.0))?
                .0
        }
    };
    let mut adopted = Vec::new();
    for entry in entries {
        if entry.operation != jetstream::kv::Operation::Put || entry.value[..] != *node.as_bytes() {
            continue;
        }
        let Some(client_id) =
            crate::node::claim_id(&entry.key).and_then(|id| MqttString::new(id).ok())
        else {
            continue;
        };
        let revision = match sessions
            .update(&entry.key, Bytes::from(me.to_owned()), entry.revision)
            .await
        {
            Ok(r) => r,
            // Claimed by a node its client connected to meanwhile.
            Err(_) => continue,
        };
        let (ops, marks) =
            state::read_session(state_kv, &client_id, crate::node::unix_ms(), patience).await?;
        adopted.push(Adopted {
            key: entry.key.clone(),
            client_id,
            revision,
            ops,
            marks,
        });
    }
    Ok(adopted)
}

/// Withdraws `node`'s filters from the interest bucket.
pub(crate) async fn withdraw_interest(
    interest: &jetstream::kv::Store,
    node: &str,
    patience: Duration,
) {
    let entries = match crate::node::read_all(interest, "interest", patience).await {
        Ok((entries, _)) => entries,
        Err(e) => {
            tracing::warn!(node, error = %e, "cannot read the departed node's filters");
            return;
        }
    };
    for entry in entries {
        let theirs = crate::node::interest_key(&entry.key).is_some_and(|(n, _)| n == node);
        if theirs && entry.operation == jetstream::kv::Operation::Put {
            let _ = interest.delete(&entry.key).await;
        }
    }
}

/// The id a forward's copies share (their `Nats-Msg-Id` less the node it was
/// for), to take a message that reached two queues once.
pub(crate) fn forward_id(m: &jetstream::Message) -> Option<&str> {
    let id = m
        .headers
        .as_ref()?
        .get(async_nats::header::NATS_MESSAGE_ID)?;
    Some(id.as_str().rsplit_once('-')?.0)
}
