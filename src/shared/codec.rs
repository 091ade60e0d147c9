//! How entities are stored in the shared tier: one Redis string per key.
//!
//! ```text
//! V<version:16 hex><shape:16 hex><postcard payload>   a committed row at that version
//! T<version:16 hex>                                   a delete (the deleted version + 1)
//! L<token>                                            a lease: a reader is loading the key
//! F<token>                                            a fence: a writer is committing the key
//! ```
//!
//! Versions are written as 16 hex digits of the version with its sign bit flipped, so the
//! Lua scripts compare versions by comparing two 8-digit halves as numbers (exact in Lua's
//! doubles) and never decode a payload. The shape fingerprint sits in the value, not in
//! the key, so a writer of one build still fences and repairs the entries of another
//! during a rolling deploy, while a reader of another shape treats the entry as a miss
//! instead of decoding it (C9).

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encodes and decodes one entity type for the shared tier. Made by `#[cache(shared)]`
/// (through [`SharedCodec::new`]) or by [`DbBuilder::shared`](crate::DbBuilder::shared).
pub struct SharedCodec<E> {
    pub(crate) shape: u64,
    pub(crate) encode: fn(&E) -> Option<Vec<u8>>,
    pub(crate) decode: fn(&[u8]) -> Option<E>,
}

impl<E> Clone for SharedCodec<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for SharedCodec<E> {}

impl<E> fmt::Debug for SharedCodec<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCodec")
            .field("shape", &format_args!("{:016x}", self.shape))
            .finish_non_exhaustive()
    }
}

impl<E: Serialize + DeserializeOwned> SharedCodec<E> {
    /// A postcard codec for values of `shape` (the derive's fingerprint of the entity's
    /// fields and types, [`CachedEntity::SHAPE`](crate::CachedEntity::SHAPE)).
    pub fn new(shape: u64) -> Self {
        SharedCodec {
            shape,
            encode: |e| postcard::to_allocvec(e).ok(),
            decode: |b| postcard::from_bytes(b).ok(),
        }
    }
}

/// `version` as 16 hex digits that sort like the numbers (sign bit flipped).
pub(crate) fn version_hex(version: i64) -> String {
    format!("{:016x}", (version as u64) ^ (1 << 63))
}

fn parse_version_hex(hex: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(hex).ok()?;
    u64::from_str_radix(text, 16)
        .ok()
        .map(|v| (v ^ (1 << 63)) as i64)
}

/// A committed row's entry.
pub(crate) fn value_entry<E>(codec: &SharedCodec<E>, version: i64, row: &E) -> Option<Vec<u8>> {
    let payload = (codec.encode)(row)?;
    let mut out = Vec::with_capacity(33 + payload.len());
    out.push(b'V');
    out.extend_from_slice(version_hex(version).as_bytes());
    out.extend_from_slice(format!("{:016x}", codec.shape).as_bytes());
    out.extend_from_slice(&payload);
    Some(out)
}

/// A delete's entry: `version` is the deleted version + 1, as in the change feed.
pub(crate) fn tombstone_entry(version: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(b'T');
    out.extend_from_slice(version_hex(version).as_bytes());
    out
}

/// What a key held, decoded as far as the header.
#[derive(Debug, PartialEq)]
pub(crate) enum Entry<'a> {
    /// A row at `version`, of `shape`, with its payload.
    Value {
        version: i64,
        shape: u64,
        payload: &'a [u8],
    },
    /// Deleted; `version` is the deleted version + 1.
    Tombstone { version: i64 },
    /// Another reader holds the lease.
    Leased,
    /// A writer is committing.
    Fenced,
    /// Not ours (another format); read as a miss.
    Foreign,
}

pub(crate) fn parse_entry(bytes: &[u8]) -> Entry<'_> {
    match bytes.first() {
        Some(b'V') if bytes.len() >= 33 => {
            let version = parse_version_hex(&bytes[1..17]);
            let shape = std::str::from_utf8(&bytes[17..33])
                .ok()
                .and_then(|t| u64::from_str_radix(t, 16).ok());
            match (version, shape) {
                (Some(version), Some(shape)) => Entry::Value {
                    version,
                    shape,
                    payload: &bytes[33..],
                },
                _ => Entry::Foreign,
            }
        }
        Some(b'T') if bytes.len() == 17 => match parse_version_hex(&bytes[1..17]) {
            Some(version) => Entry::Tombstone { version },
            None => Entry::Foreign,
        },
        Some(b'L') => Entry::Leased,
        Some(b'F') => Entry::Fenced,
        _ => Entry::Foreign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Row {
        id: i64,
        version: i64,
        name: String,
    }

    #[test]
    fn versions_sort_as_text_like_numbers() {
        let vs = [i64::MIN, -2, -1, 0, 1, 2, 255, 256, i64::MAX - 1, i64::MAX];
        for w in vs.windows(2) {
            assert!(version_hex(w[0]) < version_hex(w[1]), "{} < {}", w[0], w[1]);
            assert_eq!(parse_version_hex(version_hex(w[0]).as_bytes()), Some(w[0]));
        }
    }

    #[test]
    fn values_and_tombstones_round_trip() {
        let codec = SharedCodec::<Row>::new(0xabc);
        let row = Row {
            id: 7,
            version: 3,
            name: "ada".into(),
        };
        let bytes = value_entry(&codec, 3, &row).unwrap();
        match parse_entry(&bytes) {
            Entry::Value {
                version,
                shape,
                payload,
            } => {
                assert_eq!((version, shape), (3, 0xabc));
                assert_eq!((codec.decode)(payload), Some(row));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_entry(&tombstone_entry(4)),
            Entry::Tombstone { version: 4 }
        );
        assert_eq!(parse_entry(b"Lx1"), Entry::Leased);
        assert_eq!(parse_entry(b"Fx1"), Entry::Fenced);
        assert_eq!(parse_entry(b"something else"), Entry::Foreign);
        assert_eq!(parse_entry(b"V12"), Entry::Foreign);
    }
}
