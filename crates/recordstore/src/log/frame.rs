//! The frame format: rows encoded into checksummed frames, read back up to a torn frame.
//!
//! ```text
//! file    := MAGIC frame*
//! frame   := len:u32le crc:u32le payload        crc = CRC-32 of len's 4 bytes ++ payload
//! payload := row*
//! row     := 1:u8 table name value | 0:u8 table name
//! table   := len:u8 bytes       name := len:u32le bytes       value := len:u32le bytes
//! ```
//!
//! A value's bytes are whatever the store's encoding ([`crate::Encode`]) made of its record.

use foldhash::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::{LogError, io};

/// The first bytes of a log file; a new format gets a new magic.
pub(super) const MAGIC: &[u8; 8] = b"QMTLRS\x00\x01";
pub(super) const FRAME_HEADER: u64 = 8;
/// Frames larger than this are corrupt (no commit is this big).
const MAX_FRAME: u32 = 1 << 30;

const PUT: u8 = 1;
const DELETE: u8 = 0;

/// One table's records as the log holds them, in the order their names first appeared.
#[derive(Debug, Default)]
pub(crate) struct TableScan {
    rows: Vec<(String, Option<Vec<u8>>)>,
    position: HashMap<String, usize>,
}

impl TableScan {
    fn apply(&mut self, name: &str, value: Option<Vec<u8>>) {
        match self.position.get(name) {
            Some(&at) => self.rows[at].1 = value,
            None if value.is_some() => {
                self.position.insert(name.to_owned(), self.rows.len());
                self.rows.push((name.to_owned(), value));
            }
            None => {}
        }
    }

    /// The live records: (name, value), oldest name first.
    pub(crate) fn into_records(self) -> impl Iterator<Item = (String, Vec<u8>)> {
        self.rows
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v)))
    }

    pub(super) fn live(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.rows
            .iter()
            .filter_map(|(name, value)| value.as_deref().map(|v| (name.as_str(), v)))
    }
}

/// What a scan of a log found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub(crate) tables: HashMap<String, TableScan>,
    /// Where the last whole frame ends.
    pub(crate) good_len: u64,
    /// The file's length; past `good_len` lies a torn or corrupt frame.
    pub(crate) file_len: u64,
}

/// Reads every whole frame of the log at `path`, applying rows in order; stops at the first
/// torn or corrupt frame (see [`Scan::good_len`]).
pub(crate) fn scan(path: &Path) -> Result<Scan, LogError> {
    scan_upto(path, u64::MAX)
}

/// [`scan`] of the first `limit` bytes only.
pub(super) fn scan_upto(path: &Path, limit: u64) -> Result<Scan, LogError> {
    let file = File::open(path).map_err(io(path))?;
    let file_len = file.metadata().map_err(io(path))?.len().min(limit);
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut scan = Scan {
        file_len,
        ..Scan::default()
    };
    let mut magic = [0u8; 8];
    if reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Err(LogError::NotALog {
            path: path.display().to_string(),
        });
    }
    scan.good_len = MAGIC.len() as u64;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 8];
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_FRAME || scan.good_len + FRAME_HEADER + u64::from(len) > file_len {
            break;
        }
        payload.resize(len as usize, 0);
        if reader.read_exact(&mut payload).is_err() || frame_crc(&payload) != crc {
            break;
        }
        if apply_payload(&payload, &mut scan.tables).is_none() {
            break;
        }
        scan.good_len += FRAME_HEADER + u64::from(len);
    }
    Ok(scan)
}

fn frame_crc(payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&(payload.len() as u32).to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Applies a frame's rows; `None` if the payload is malformed (then nothing of it counts:
/// rows are collected first).
fn apply_payload(payload: &[u8], tables: &mut HashMap<String, TableScan>) -> Option<()> {
    let mut rows = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let (&op, tail) = rest.split_first()?;
        let (&table_len, tail) = tail.split_first()?;
        let (table, tail) = split(tail, usize::from(table_len))?;
        let (name, tail) = sized(tail)?;
        let (value, tail) = match op {
            PUT => {
                let (value, tail) = sized(tail)?;
                (Some(value), tail)
            }
            DELETE => (None, tail),
            _ => return None,
        };
        rows.push((
            std::str::from_utf8(table).ok()?,
            std::str::from_utf8(name).ok()?,
            value,
        ));
        rest = tail;
    }
    for (table, name, value) in rows {
        tables
            .entry(table.to_owned())
            .or_default()
            .apply(name, value.map(<[u8]>::to_vec));
    }
    Some(())
}

fn split(bytes: &[u8], at: usize) -> Option<(&[u8], &[u8])> {
    (bytes.len() >= at).then(|| bytes.split_at(at))
}

fn sized(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = split(bytes, 4)?;
    split(rest, u32::from_le_bytes(len.try_into().ok()?) as usize)
}

/// A frame's header for `payload`: its length and checksum.
pub(super) fn header(payload: &[u8]) -> [u8; FRAME_HEADER as usize] {
    let mut header = [0u8; FRAME_HEADER as usize];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&frame_crc(payload).to_le_bytes());
    header
}

/// A row's value as a frame takes it: bytes ready, or a record to encode into the frame.
#[derive(Clone, Copy)]
pub(crate) enum ValueRef<'a> {
    Bytes(&'a [u8]),
    Record(&'a dyn crate::Encode),
}

/// Appends one row to a frame payload being built; returns the bytes the row takes (0 for a
/// deletion).
pub(crate) fn encode_row(
    buf: &mut Vec<u8>,
    table: &str,
    name: &str,
    value: Option<ValueRef<'_>>,
) -> Result<u64, crate::CodecError> {
    let start = buf.len();
    buf.push(if value.is_some() { PUT } else { DELETE });
    buf.push(table.len() as u8);
    buf.extend_from_slice(table.as_bytes());
    buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
    buf.extend_from_slice(name.as_bytes());
    let Some(value) = value else {
        return Ok(0);
    };
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    match value {
        ValueRef::Bytes(bytes) => buf.extend_from_slice(bytes),
        ValueRef::Record(record) => {
            if let Err(e) = record.encode(buf) {
                buf.truncate(start);
                return Err(e);
            }
        }
    }
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok((buf.len() - start) as u64)
}
