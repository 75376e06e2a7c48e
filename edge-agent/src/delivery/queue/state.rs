//! What the queue commits besides records, so that a restart changes nothing that was
//! acknowledged: the processors' and inference's per-device state, and which MQTT
//! deliveries are already in.
//!
//! A reading absorbed into an aggregate window, or into a significant-change or inference
//! window, is acknowledged to the broker like any other once its unit commits; the state
//! it changed is written in that same transaction (the latest value per key of each
//! group), so a crash or power cut can never split the two. At start the agent loads the
//! state back. Each unit of a QoS 1 message also records its packet id with a hash of its
//! topic and payload: a message the broker delivers again (DUP set) after a crash or a
//! lost connection, whose unit was committed but whose PUBACK never reached the broker,
//! is recognised, acknowledged and not processed twice.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::seal::{Keyring, Kind};
use super::store::QueueError;
use crate::record::{DeliveryId, StateChange};

/// `meta` key of the fingerprint of the configuration the state belongs to.
const FINGERPRINT_KEY: &str = "state_fingerprint";

/// The state loaded at start.
#[derive(Debug, Default)]
pub struct SavedState {
    /// Every key's state, least recently changed first.
    pub rows: Vec<(String, Vec<u8>)>,
    /// State of another configuration was found and deleted.
    pub discarded: bool,
}

/// The changes of the committed units of one transaction, reduced to the last value per
/// key and per packet id.
#[derive(Default)]
pub(super) struct Pending<'a> {
    /// Each key's last value, with the order of that last change (kept in `touched`, so
    /// the least recently changed come back first at start).
    state: HashMap<&'a str, (usize, Option<&'a [u8]>)>,
    /// Changes added so far.
    changes: usize,
    deliveries: HashMap<u16, i64>,
}

impl<'a> Pending<'a> {
    pub(super) fn add(&mut self, state: &'a [StateChange], delivery: Option<DeliveryId>) {
        for change in state {
            let order = self.changes;
            self.changes += 1;
            self.state
                .insert(change.key.as_str(), (order, change.value.as_deref()));
        }
        if let Some(d) = delivery {
            self.deliveries.insert(d.pkid, d.hash);
        }
    }

    /// Writes them in `tx`; `clock` orders the keys by when they last changed.
    pub(super) fn write(
        &self,
        tx: &Transaction<'_>,
        clock: &mut i64,
        keys: &Keyring,
    ) -> Result<(), QueueError> {
        if !self.state.is_empty() {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO state (key, touched, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET touched = excluded.touched, value = excluded.value",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM state WHERE key = ?1")?;
            let mut changes: Vec<_> = self.state.iter().collect();
            changes.sort_unstable_by_key(|(_, (order, _))| *order);
            for (key, (_, value)) in changes {
                match value {
                    Some(v) => {
                        *clock += 1;
                        let sealed = keys.seal(Kind::State, v)?;
                        upsert.execute(params![key, *clock, sealed.as_ref()])?;
                    }
                    None => {
                        delete.execute([key])?;
                    }
                }
            }
        }
        if !self.deliveries.is_empty() {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO deliveries (pkid, hash) VALUES (?1, ?2)
                 ON CONFLICT (pkid) DO UPDATE SET hash = excluded.hash",
            )?;
            for (pkid, hash) in &self.deliveries {
                upsert.execute(params![pkid, hash])?;
            }
        }
        Ok(())
    }
}

/// The latest `touched` value, for the clock of [`Pending::write`].
pub(super) fn clock(conn: &Connection) -> Result<i64, QueueError> {
    Ok(
        conn.query_row("SELECT coalesce(max(touched), 0) FROM state", [], |r| {
            r.get(0)
        })?,
    )
}

/// Every key's state, least recently changed first, after checking that it belongs to the
/// configuration with `fingerprint`: state of another configuration is deleted (returns
/// none), and the fingerprint recorded.
pub(super) fn load(
    conn: &mut Connection,
    fingerprint: i64,
    keys: &Keyring,
) -> Result<SavedState, QueueError> {
    let tx = conn.transaction()?;
    let stored: Option<i64> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [FINGERPRINT_KEY],
            |r| r.get(0),
        )
        .optional()?;
    if stored != Some(fingerprint) {
        let discarded = tx.execute("DELETE FROM state", [])? > 0;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![FINGERPRINT_KEY, fingerprint],
        )?;
        tx.commit()?;
        return Ok(SavedState {
            rows: Vec::new(),
            discarded,
        });
    }
    let rows = {
        let mut stmt = tx.prepare("SELECT key, value FROM state ORDER BY touched")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        rows.map(|row| {
            let (key, stored) = row?;
            let value = keys.open(Kind::State, &stored)?.into_owned();
            Ok((key, value))
        })
        .collect::<Result<Vec<_>, QueueError>>()?
    };
    tx.commit()?;
    Ok(SavedState {
        rows,
        discarded: false,
    })
}

/// Whether the unit of this delivery is already committed.
pub(super) fn delivered(conn: &Connection, id: DeliveryId) -> Result<bool, QueueError> {
    let hash: Option<i64> = conn
        .query_row(
            "SELECT hash FROM deliveries WHERE pkid = ?1",
            [id.pkid],
            |r| r.get(0),
        )
        .optional()?;
    Ok(hash == Some(id.hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_identified_by_packet_id_topic_and_payload() {
        let a = DeliveryId::of(7, "s/a", b"{\"v\":1}").unwrap();
        assert_eq!(Some(a), DeliveryId::of(7, "s/a", b"{\"v\":1}"));
        assert_ne!(a, DeliveryId::of(8, "s/a", b"{\"v\":1}").unwrap());
        assert_ne!(a, DeliveryId::of(7, "s/b", b"{\"v\":1}").unwrap());
        assert_ne!(a, DeliveryId::of(7, "s/a", b"{\"v\":2}").unwrap());
        // The topic's length is hashed: moving bytes between topic and payload differs.
        assert_ne!(
            DeliveryId::of(7, "s/ab", b"c").unwrap(),
            DeliveryId::of(7, "s/a", b"bc").unwrap()
        );
        assert_eq!(
            DeliveryId::of(0, "s/a", b"x"),
            None,
            "QoS 0 has no identity"
        );
    }
}
