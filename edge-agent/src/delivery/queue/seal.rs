//! Encryption at rest of what the queue file holds (`buffer.encryption`): record payloads,
//! dead letters and the processors' saved state are sealed with AES-256-GCM before they
//! reach SQLite, so a node carried off, or an SD card pulled, gives away no reading.
//!
//! Each sealed value names the key that sealed it:
//!
//! ```text
//! 0x00 'E' 'P' 0x01 | kind | id length | key id | nonce (12 bytes) | ciphertext + tag (16)
//! ```
//!
//! The header (everything before the nonce) is the AEAD's associated data, so neither the
//! key id nor the kind (record, dead letter, state) can be changed unnoticed. The nonce is
//! random (96 bits, from the thread's CSPRNG, ChaCha12 seeded and reseeded by the
//! operating system: a system call per record cost a third of the ingest rate); a key
//! should seal fewer than 2^32 values, years of a busy node. Plain JSON (what an unencrypted queue holds) starts with `{`, `[`
//! or a digit, never with a zero byte, so a queue switched to encryption keeps reading the
//! records it held before, and sealing the new ones.
//!
//! The first key of the keyring seals; every key decrypts what it sealed, so a new key
//! takes over for new records while the backlog stays readable until it is delivered.
//! Which keys sealed something in a queue is recorded in its `queue_keys` table with a
//! sealed check value: a wrong key, or a missing one, stops the agent at start with a
//! clear error, before anything is read or written (see [`Keyring::verify`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rusqlite::{Connection, OptionalExtension, params};

/// First bytes of every sealed value (format version 1).
const MAGIC: [u8; 4] = [0x00, b'E', b'P', 0x01];
/// Bytes of an AES-256 key.
pub const KEY_LEN: usize = 32;
/// Longest key id.
pub const MAX_KEY_ID: usize = 63;
/// What the check value of a key seals.
const CHECK_PLAINTEXT: &[u8] = b"edgepipe queue key check";
/// The table that records the keys a queue file has used.
const KEYS_TABLE: &str = "CREATE TABLE IF NOT EXISTS queue_keys (
                              id TEXT PRIMARY KEY,
                              created_ms INTEGER NOT NULL,
                              check_value BLOB NOT NULL)";

/// What a sealed value is: part of the associated data, so one kind cannot pass for
/// another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A queued record's upstream JSON.
    Record = b'r',
    /// A dead letter's JSON array.
    DeadLetter = b'd',
    /// A device's saved processor or inference state.
    State = b's',
    /// A key's check value in `queue_keys`.
    Check = b'k',
}

/// Why sealing, opening or verifying failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "key `{0}` (buffer.encryption.keys) is not the key that sealed this queue's records: \
         configure the key that was used; nothing was read or changed"
    )]
    WrongKey(String),
    #[error(
        "this queue holds data sealed with key `{0}`, which buffer.encryption.keys does not \
         list: add it (after the current key) until that data is delivered; nothing was read \
         or changed"
    )]
    MissingKey(String),
    #[error("a {kind} sealed with key `{id}` failed authentication: it was changed on disk")]
    Tampered { kind: &'static str, id: String },
    #[error("a sealed value is truncated or malformed")]
    Malformed,
    #[error("key `{id}`: {message}")]
    BadKey { id: String, message: String },
    #[error("queue key table: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

struct Key {
    id: String,
    aead: LessSafeKey,
}

/// The keys of `buffer.encryption`, the first one sealing. Empty: nothing is sealed, and
/// only plain values can be read. Cheap to clone.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Arc<Vec<Key>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("ids", &ids).finish()
    }
}

impl PartialEq for Keyring {
    /// Equal when the same ids are in the same order (key bytes are never compared or
    /// shown).
    fn eq(&self, other: &Self) -> bool {
        self.ids().eq(other.ids())
    }
}

impl Eq for Keyring {}

impl Keyring {
    /// A keyring from `(id, key material)` pairs, the first sealing. Key material is 32
    /// raw bytes, 64 hexadecimal digits or the base64 of 32 bytes (surrounding whitespace
    /// ignored).
    pub fn new(keys: Vec<(String, Vec<u8>)>) -> Result<Self, SealError> {
        let mut out = Vec::with_capacity(keys.len());
        for (id, material) in keys {
            if !valid_id(&id) {
                return Err(SealError::BadKey {
                    id,
                    message: format!(
                        "a key id is 1 to {MAX_KEY_ID} characters of a-z, A-Z, 0-9, '.', '_' or '-'"
                    ),
                });
            }
            if out.iter().any(|k: &Key| k.id == id) {
                return Err(SealError::BadKey {
                    id,
                    message: "listed twice".into(),
                });
            }
            let bytes = decode_key(&material).ok_or_else(|| SealError::BadKey {
                id: id.clone(),
                message: format!(
                    "a key is {KEY_LEN} bytes: raw, 64 hexadecimal digits or base64 \
                     (for example `openssl rand -hex 32`); got {} bytes that are none of these",
                    material.len()
                ),
            })?;
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::BadKey {
                id: id.clone(),
                message: "rejected by the cipher".into(),
            })?;
            out.push(Key {
                id,
                aead: LessSafeKey::new(unbound),
            });
        }
        Ok(Self {
            keys: Arc::new(out),
        })
    }

    /// Whether new values are sealed.
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The key ids, the sealing one first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// `plain` sealed with the first key, or unchanged when the keyring is empty.
    pub fn seal<'a>(&self, kind: Kind, plain: &'a [u8]) -> Result<Cow<'a, [u8]>, SealError> {
        let Some(key) = self.keys.first() else {
            return Ok(Cow::Borrowed(plain));
        };
        Ok(Cow::Owned(self.seal_with(key, kind, plain)?))
    }

    fn seal_with(&self, key: &Key, kind: Kind, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::with_capacity(
            MAGIC.len() + 2 + key.id.len() + NONCE_LEN + plain.len() + AES_256_GCM.tag_len(),
        );
        push_header(&mut out, kind, &key.id);
        let header_len = out.len();
        let mut nonce = [0u8; NONCE_LEN];
        rand::Rng::fill(&mut rand::rng(), &mut nonce[..]);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (header, body) = out.split_at_mut(header_len);
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&*header),
                &mut body[NONCE_LEN..],
            )
            .map_err(|_| SealError::Malformed)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The plain value of a stored one: unchanged when it was never sealed, decrypted and
    /// authenticated when it was.
    pub fn open<'a>(&self, kind: Kind, stored: &'a [u8]) -> Result<Cow<'a, [u8]>, SealError> {
        // Without keys every value is plain: a queue holding sealed values does not open
        // without them ([`Keyring::verify`]), and saved inference state is raw bytes that
        // may begin like anything.
        if !self.is_enabled() {
            return Ok(Cow::Borrowed(stored));
        }
        let Some(sealed) = Sealed::parse(stored)? else {
            return Ok(Cow::Borrowed(stored));
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.id == sealed.id)
            .ok_or_else(|| SealError::MissingKey(sealed.id.to_string()))?;
        Ok(Cow::Owned(open_with(key, kind, &sealed)?))
    }

    /// Checks the keyring against the queue file before anything is read or written:
    /// every configured key that sealed something here must be that same key, and every
    /// key that sealed something still stored must be configured. Records the keys that
    /// are new here (with a check value), and forgets those whose data is all gone.
    pub fn verify(&self, conn: &Connection, now_ms: i64) -> Result<(), SealError> {
        if !has_keys_table(conn)? && !self.is_enabled() {
            return Ok(());
        }
        conn.execute_batch(KEYS_TABLE)?;
        let recorded = self.check_recorded(conn)?;
        for (id, used) in &recorded {
            if !used {
                let prefix = header(Kind::State, id);
                let discarded = conn.execute(
                    "DELETE FROM state WHERE substr(value, 1, ?1) = ?2",
                    params![prefix.len() as i64, prefix],
                )?;
                if discarded > 0 {
                    tracing::warn!(key = %id, entries = discarded, "saved processor state sealed with a key no longer listed was discarded");
                }
                conn.execute("DELETE FROM queue_keys WHERE id = ?1", [id])?;
                tracing::info!(key = %id, "queue key retired: nothing sealed with it is left");
            }
        }
        for key in self.keys.iter() {
            if !recorded.contains_key(&key.id) {
                let check = self.seal_with(key, Kind::Check, CHECK_PLAINTEXT)?;
                conn.execute(
                    "INSERT INTO queue_keys (id, created_ms, check_value) VALUES (?1, ?2, ?3)",
                    params![key.id, now_ms, check],
                )?;
            }
        }
        Ok(())
    }

    /// [`Keyring::verify`] without writing anything (for `edge-agent doctor` beside a
    /// running agent): the ids of the keys this queue records.
    pub fn check(&self, conn: &Connection) -> Result<Vec<String>, SealError> {
        if !has_keys_table(conn)? {
            return Ok(Vec::new());
        }
        Ok(self.check_recorded(conn)?.into_keys().collect())
    }

    /// Checks every recorded key against the keyring: a configured key must open its
    /// check value; an unconfigured one must seal nothing still stored. Returns the
    /// recorded ids, each with whether it is configured or still in use.
    fn check_recorded(&self, conn: &Connection) -> Result<BTreeMap<String, bool>, SealError> {
        let recorded: BTreeMap<String, Vec<u8>> = {
            let mut stmt = conn.prepare("SELECT id, check_value FROM queue_keys")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = BTreeMap::new();
        for (id, check) in &recorded {
            let needed = match self.keys.iter().find(|k| &k.id == id) {
                Some(key) => {
                    let opened = Sealed::parse(check)
                        .ok()
                        .flatten()
                        .filter(|sealed| sealed.id == key.id)
                        .and_then(|sealed| open_with(key, Kind::Check, &sealed).ok());
                    if opened.as_deref() != Some(CHECK_PLAINTEXT) {
                        return Err(SealError::WrongKey(key.id.clone()));
                    }
                    true
                }
                None if still_used(conn, id)? => return Err(SealError::MissingKey(id.clone())),
                None => false,
            };
            out.insert(id.clone(), needed);
        }
        Ok(out)
    }
}

fn has_keys_table(conn: &Connection) -> Result<bool, SealError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'queue_keys'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0)
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Record => "record",
            Self::DeadLetter => "dead letter",
            Self::State => "saved state",
            Self::Check => "key check value",
        }
    }
}

/// The parts of a sealed value.
struct Sealed<'a> {
    header: &'a [u8],
    kind: u8,
    id: &'a str,
    nonce: [u8; NONCE_LEN],
    body: &'a [u8],
}

impl<'a> Sealed<'a> {
    /// `None` for a plain value (one that does not begin with the magic bytes).
    fn parse(stored: &'a [u8]) -> Result<Option<Self>, SealError> {
        if !stored.starts_with(&MAGIC) {
            return Ok(None);
        }
        if stored.len() < MAGIC.len() + 2 {
            return Err(SealError::Malformed);
        }
        let kind = stored[MAGIC.len()];
        let id_len = stored[MAGIC.len() + 1] as usize;
        let header_len = MAGIC.len() + 2 + id_len;
        if stored.len() < header_len + NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Malformed);
        }
        let id = std::str::from_utf8(&stored[MAGIC.len() + 2..header_len])
            .map_err(|_| SealError::Malformed)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&stored[header_len..header_len + NONCE_LEN]);
        Ok(Some(Self {
            header: &stored[..header_len],
            kind,
            id,
            nonce,
            body: &stored[header_len + NONCE_LEN..],
        }))
    }
}

fn header(kind: Kind, id: &str) -> Vec<u8> {
    let mut h = Vec::with_capacity(MAGIC.len() + 2 + id.len());
    push_header(&mut h, kind, id);
    h
}

fn push_header(out: &mut Vec<u8>, kind: Kind, id: &str) {
    out.extend_from_slice(&MAGIC);
    out.push(kind as u8);
    out.push(id.len() as u8);
    out.extend_from_slice(id.as_bytes());
}

/// Whether a record or dead letter stored is still sealed with key `id` (scans the
/// tables: runs only when a key was removed from the configuration). Saved processor
/// state does not count: without its key it is discarded (see [`Keyring::verify`]), as
/// after a change of the processors.
fn still_used(conn: &Connection, id: &str) -> Result<bool, SealError> {
    let probes: [(&str, Kind); 2] = [
        (
            "SELECT 1 FROM records WHERE substr(body, 1, ?1) = ?2 LIMIT 1",
            Kind::Record,
        ),
        (
            "SELECT 1 FROM dead_letters WHERE substr(body, 1, ?1) = ?2 LIMIT 1",
            Kind::DeadLetter,
        ),
    ];
    for (sql, kind) in probes {
        let prefix = header(kind, id);
        let found: Option<i64> = conn
            .query_row(sql, params![prefix.len() as i64, prefix], |r| r.get(0))
            .optional()?;
        if found.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Decrypts and authenticates `sealed` with `key`.
fn open_with(key: &Key, kind: Kind, sealed: &Sealed<'_>) -> Result<Vec<u8>, SealError> {
    if sealed.kind != kind as u8 {
        return Err(SealError::Malformed);
    }
    let mut body = sealed.body.to_vec();
    let len = key
        .aead
        .open_in_place(
            Nonce::assume_unique_for_key(sealed.nonce),
            Aad::from(sealed.header),
            &mut body,
        )
        .map_err(|_| SealError::Tampered {
            kind: kind.name(),
            id: sealed.id.to_string(),
        })?
        .len();
    body.truncate(len);
    Ok(body)
}

fn valid_id(id: &str) -> bool {
    (1..=MAX_KEY_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 32 raw bytes, 64 hex digits or base64 of 32 bytes.
fn decode_key(material: &[u8]) -> Option<[u8; KEY_LEN]> {
    if material.len() == KEY_LEN {
        return material.try_into().ok();
    }
    let text = std::str::from_utf8(material).ok()?.trim();
    let bytes = if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).ok()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?
    };
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[(&str, u8)]) -> Keyring {
        Keyring::new(
            keys.iter()
                .map(|(id, b)| (id.to_string(), vec![*b; KEY_LEN]))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn a_sealed_value_opens_with_its_key_and_shows_nothing_of_itself() {
        let k = ring(&[("a", 1)]);
        let plain = br#"{"value":1234.5678}"#;
        let sealed = k.seal(Kind::Record, plain).unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"1234.5678"));
        assert_eq!(sealed[0], 0);
        assert_eq!(k.open(Kind::Record, &sealed).unwrap().as_ref(), plain);
        // Two seals of the same value differ (random nonce).
        assert_ne!(sealed, k.seal(Kind::Record, plain).unwrap());
    }

    #[test]
    fn plain_values_pass_through_and_an_empty_ring_seals_nothing() {
        let none = Keyring::default();
        assert_eq!(none.seal(Kind::Record, b"{}").unwrap().as_ref(), b"{}");
        let k = ring(&[("a", 1)]);
        assert_eq!(k.open(Kind::Record, b"[1]").unwrap().as_ref(), b"[1]");
        // Raw state bytes (an inference window of zeros) are plain, with or without keys.
        let zeros = [0u8; 16];
        assert_eq!(none.open(Kind::State, &zeros).unwrap().as_ref(), zeros);
        assert_eq!(k.open(Kind::State, &zeros).unwrap().as_ref(), zeros);
    }

    #[test]
    fn tampering_the_body_header_or_kind_is_refused() {
        let k = ring(&[("a", 1)]);
        let sealed = k.seal(Kind::Record, b"{\"v\":1}").unwrap().into_owned();
        let mut body = sealed.clone();
        *body.last_mut().unwrap() ^= 1;
        assert!(matches!(
            k.open(Kind::Record, &body),
            Err(SealError::Tampered { .. })
        ));
        assert!(matches!(
            k.open(Kind::State, &sealed),
            Err(SealError::Malformed)
        ));
        let mut kind = sealed.clone();
        kind[4] = Kind::State as u8;
        assert!(matches!(
            k.open(Kind::State, &kind),
            Err(SealError::Tampered { .. })
        ));
        assert!(matches!(
            k.open(Kind::Record, &sealed[..10]),
            Err(SealError::Malformed)
        ));
    }

    #[test]
    fn a_rotated_ring_reads_the_old_key_and_seals_with_the_new() {
        let old = ring(&[("a", 1)]);
        let rotated = ring(&[("b", 2), ("a", 1)]);
        let before = old.seal(Kind::Record, b"{\"v\":1}").unwrap().into_owned();
        let after = rotated
            .seal(Kind::Record, b"{\"v\":2}")
            .unwrap()
            .into_owned();
        assert_eq!(
            rotated.open(Kind::Record, &before).unwrap().as_ref(),
            b"{\"v\":1}"
        );
        assert!(matches!(
            old.open(Kind::Record, &after),
            Err(SealError::MissingKey(id)) if id == "b"
        ));
        let wrong = ring(&[("a", 9)]);
        assert!(matches!(
            wrong.open(Kind::Record, &before),
            Err(SealError::Tampered { .. })
        ));
    }

    #[test]
    fn key_material_is_raw_hex_or_base64_of_32_bytes() {
        let raw = vec![7u8; 32];
        let hexed = hex::encode(&raw).into_bytes();
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(&raw)
            .into_bytes();
        for material in [raw.clone(), hexed, b64] {
            assert_eq!(decode_key(&material), Some([7u8; 32]));
        }
        assert_eq!(decode_key(b"too short"), None);
        assert!(matches!(
            Keyring::new(vec![("a".into(), b"0123".to_vec())]),
            Err(SealError::BadKey { .. })
        ));
        assert!(matches!(
            Keyring::new(vec![("a b".into(), raw.clone())]),
            Err(SealError::BadKey { .. })
        ));
        assert!(matches!(
            Keyring::new(vec![("a".into(), raw.clone()), ("a".into(), raw)]),
            Err(SealError::BadKey { .. })
        ));
    }
}
