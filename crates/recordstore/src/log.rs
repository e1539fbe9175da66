//! The file format and its I/O: an append-only log of checksummed commit frames, rewritten to
//! its live records when it grows to twice their size. The rewrite (compaction) runs on a thread
//! of its own while commits go on; the frames committed meanwhile are copied after it before it
//! is renamed over the log.
//!
//! ```text
//! file    := MAGIC frame*
//! frame   := len:u32le crc:u32le payload        crc = CRC-32 of len's 4 bytes ++ payload
//! payload := row*
//! row     := 1:u8 table name value | 0:u8 table name
//! table   := len:u8 bytes       name := len:u32le bytes       value := len:u32le bytes
//! ```
//!
//! One commit is one frame, written with one `pwrite` (and an `fdatasync` when durable), so a
//! crash leaves at most a torn last frame, which the checksum exposes and opening cuts off. A
//! durable commit's sync also covers every lazy frame before it: order on disk is queue order.

use foldhash::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The first bytes of a log file; a new format gets a new magic.
const MAGIC: &[u8; 8] = b"QMTLRS\x00\x01";
const FRAME_HEADER: u64 = 8;
/// Frames larger than this are corrupt (no commit is this big).
const MAX_FRAME: u32 = 1 << 30;
/// A log smaller than this is never compacted.
const COMPACT_MIN: u64 = 16 << 20;
/// Payload size of the frames a compaction writes.
const SNAPSHOT_FRAME: usize = 4 << 20;

const PUT: u8 = 1;
const DELETE: u8 = 0;

/// Why a log file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O on {path} failed")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a record log (unknown header)")]
    NotALog { path: String },
    #[error("a record could not be encoded")]
    Encode {
        #[source]
        source: crate::CodecError,
    },
    #[error("the log {path} stopped accepting writes after a failed sync: {reason}")]
    Poisoned { path: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

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

    fn live(&self) -> impl Iterator<Item = (&str, &[u8])> {
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
fn scan_upto(path: &Path, limit: u64) -> Result<Scan, LogError> {
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

/// The writer's handle on the log: appends frames and compacts.
#[derive(Debug)]
pub(crate) struct LogFile {
    path: PathBuf,
    file: File,
    /// Where the next frame goes: the end of the last whole frame.
    len: u64,
    /// Size of each live row by a hash of (table, name), summed in `live_bytes`; a hash
    /// collision only skews when compaction runs.
    live: HashMap<u64, u64>,
    /// The rows of the frame under construction: (hash, size or `None` for a deletion).
    sizes: Vec<(u64, Option<u64>)>,
    live_bytes: u64,
    hasher: foldhash::fast::FixedState,
    /// Set when a sync failed: what reached the disk is then unknown until the log is reopened.
    poisoned: Option<String>,
    /// Frame under construction (kept to reuse its allocation).
    frame: Vec<u8>,
    /// A compaction running beside the writer.
    compaction: Option<Compaction>,
}

/// A compaction in progress: a thread writing the live records of the log's first `from_len`
/// bytes to the staging file. Frames appended meanwhile are copied over when it finishes.
#[derive(Debug)]
struct Compaction {
    from_len: u64,
    thread: std::thread::JoinHandle<Result<u64, LogError>>,
}

impl LogFile {
    /// Opens the log at `path`, creating it if missing, and cuts off a torn last frame. Returns
    /// the log and what it holds.
    pub(crate) fn open(path: &Path) -> Result<(LogFile, Scan), LogError> {
        let fresh = match std::fs::metadata(path) {
            Ok(meta) => meta.len() < MAGIC.len() as u64,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io(path)(e)),
        };
        let staging = staging_path(path);
        if staging.exists() {
            // A compaction that did not finish: the log itself is whole.
            std::fs::remove_file(&staging).map_err(io(&staging))?;
        }
        if fresh {
            write_new(path, |_| Ok(()))?;
        }
        let scan = scan(path)?;
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        if scan.good_len < scan.file_len {
            tracing::warn!(
                path = %path.display(),
                discarded_bytes = scan.file_len - scan.good_len,
                "The record log ended in a torn or corrupt frame (a crash during a write); it was cut off."
            );
            file.set_len(scan.good_len).map_err(io(path))?;
            file.sync_all().map_err(io(path))?;
        }
        let mut log = LogFile {
            path: path.to_owned(),
            file,
            len: scan.good_len,
            live: HashMap::default(),
            sizes: Vec::new(),
            live_bytes: 0,
            hasher: foldhash::fast::FixedState::with_seed(0),
            poisoned: None,
            frame: Vec::new(),
            compaction: None,
        };
        log.count_live(&scan);
        Ok((log, scan))
    }

    fn count_live(&mut self, scan: &Scan) {
        self.live.clear();
        self.live_bytes = 0;
        for (table, rows) in &scan.tables {
            for (name, value) in rows.live() {
                // As `encode_row` would size it.
                let size = (2 + table.len() + 4 + name.len() + 4 + value.len()) as u64;
                self.track(self.key(table, name), Some(size));
            }
        }
    }

    fn key(&self, table: &str, name: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((table, name))
    }

    fn track(&mut self, key: u64, size: Option<u64>) {
        let old = match size {
            Some(size) => self.live.insert(key, size),
            None => self.live.remove(&key),
        };
        self.live_bytes -= old.unwrap_or(0);
        self.live_bytes += size.unwrap_or(0);
    }

    /// Fails if the log stopped accepting writes, or its file is gone.
    pub(crate) fn check(&self) -> Result<(), LogError> {
        if let Some(reason) = &self.poisoned {
            return Err(LogError::Poisoned {
                path: self.path.display().to_string(),
                reason: reason.clone(),
            });
        }
        std::fs::metadata(&self.path).map_err(io(&self.path))?;
        Ok(())
    }

    /// Appends one frame of `rows` (table, name, value or `None` to delete), synced to disk if
    /// `durable`. On failure nothing of it counts: the file is cut back to where it was.
    pub(crate) fn append<'a>(
        &mut self,
        rows: impl Iterator<Item = (&'a str, &'a str, Option<ValueRef<'a>>)>,
        durable: bool,
    ) -> Result<(), LogError> {
        if let Some(reason) = &self.poisoned {
            return Err(LogError::Poisoned {
                path: self.path.display().to_string(),
                reason: reason.clone(),
            });
        }
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        frame.extend_from_slice(&[0; FRAME_HEADER as usize]);
        let mut sizes = std::mem::take(&mut self.sizes);
        sizes.clear();
        for (table, name, value) in rows {
            match encode_row(&mut frame, table, name, value) {
                Ok(size) => sizes.push((self.key(table, name), value.map(|_| size))),
                Err(source) => {
                    self.frame = frame;
                    self.sizes = sizes;
                    return Err(LogError::Encode { source });
                }
            }
        }
        let written = if frame.len() as u64 == FRAME_HEADER {
            Ok(())
        } else {
            let payload_len = frame.len() - FRAME_HEADER as usize;
            let crc = frame_crc(&frame[FRAME_HEADER as usize..]);
            frame[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
            frame[4..8].copy_from_slice(&crc.to_le_bytes());
            self.file.write_all_at(&frame, self.len)
        };
        let result = match written {
            Ok(()) if durable => self.file.sync_data().inspect_err(|e| {
                self.poisoned = Some(e.to_string());
            }),
            other => other,
        };
        let appended = frame.len() as u64 - FRAME_HEADER;
        self.frame = frame;
        if let Err(e) = result {
            // A write that failed part-way (a full disk) leaves bytes no frame owns.
            if self.file.set_len(self.len).is_err() && self.poisoned.is_none() {
                self.poisoned = Some(format!("could not cut off a failed write: {e}"));
            }
            return Err(io(&self.path)(e));
        }
        if appended > 0 {
            self.len += FRAME_HEADER + appended;
            for &(key, size) in &sizes {
                self.track(key, size);
            }
        }
        self.sizes = sizes;
        Ok(())
    }

    /// Whether the log holds more than twice its live records (and is worth rewriting).
    fn wants_compaction(&self) -> bool {
        self.poisoned.is_none() && self.len >= COMPACT_MIN && self.len > 2 * self.live_bytes
    }

    /// Between commits: swaps in a finished compaction, or starts one when the log has grown to
    /// twice its live records. Compactions run on their own thread, so commits go on meanwhile.
    pub(crate) fn maintain(&mut self) {
        if self
            .compaction
            .as_ref()
            .is_some_and(|c| c.thread.is_finished())
        {
            self.finish_compaction();
        }
        if self.compaction.is_none() && self.wants_compaction() {
            let (path, from_len) = (self.path.clone(), self.len);
            match std::thread::Builder::new()
                .name("recordstore-compact".into())
                .spawn(move || write_snapshot(&path, from_len))
            {
                Ok(thread) => self.compaction = Some(Compaction { from_len, thread }),
                Err(error) => {
                    tracing::warn!(%error, "The record log's compaction could not start.");
                }
            }
        }
    }

    /// Waits for a running compaction and swaps it in (on close, so no work is left behind).
    pub(crate) fn finish_compaction(&mut self) {
        let Some(compaction) = self.compaction.take() else {
            return;
        };
        let before = self.len;
        let staging = staging_path(&self.path);
        let swapped = compaction
            .thread
            .join()
            .unwrap_or_else(|_| {
                Err(LogError::Io {
                    path: staging.display().to_string(),
                    source: std::io::Error::other("the compaction thread panicked"),
                })
            })
            .and_then(|snapshot_len| self.swap_in(&staging, compaction.from_len, snapshot_len));
        match swapped {
            Ok(()) => tracing::info!(
                path = %self.path.display(),
                before_bytes = before,
                after_bytes = self.len,
                "The record log was compacted."
            ),
            Err(error) => {
                let _ = std::fs::remove_file(&staging);
                // The log stays as it was: whole, only larger.
                tracing::warn!(error = %error_chain(&error), "The record log could not be compacted.");
            }
        }
    }

    /// Appends the frames written since the snapshot to it, makes it durable and renames it
    /// over the log.
    fn swap_in(
        &mut self,
        staging: &Path,
        from_len: u64,
        snapshot_len: u64,
    ) -> Result<(), LogError> {
        self.check()?;
        let file = File::options()
            .read(true)
            .write(true)
            .open(staging)
            .map_err(io(staging))?;
        let mut buffer = vec![0u8; SNAPSHOT_FRAME];
        let (mut read_at, mut write_at) = (from_len, snapshot_len);
        while read_at < self.len {
            let n = buffer.len().min((self.len - read_at) as usize);
            self.file
                .read_exact_at(&mut buffer[..n], read_at)
                .map_err(io(&self.path))?;
            file.write_all_at(&buffer[..n], write_at)
                .map_err(io(staging))?;
            read_at += n as u64;
            write_at += n as u64;
        }
        file.sync_data().map_err(io(staging))?;
        std::fs::rename(staging, &self.path).map_err(io(&self.path))?;
        self.file = file;
        self.len = write_at;
        sync_dir(&self.path).map_err(io(&self.path))
    }

    /// Compacts now and waits for it (tests).
    #[cfg(test)]
    fn compact(&mut self) {
        self.maintain();
        self.finish_compaction();
    }
}

fn staging_path(path: &Path) -> PathBuf {
    path.with_extension("log-new")
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Writes the live records of the log's first `from_len` bytes to its staging file, synced;
/// returns the staging file's length.
fn write_snapshot(path: &Path, from_len: u64) -> Result<u64, LogError> {
    let staging = staging_path(path);
    let scan = scan_upto(path, from_len)?;
    let written = (|| -> std::io::Result<u64> {
        let file = File::create(&staging)?;
        file.write_all_at(MAGIC, 0)?;
        let mut frame = Vec::with_capacity(SNAPSHOT_FRAME + 4096);
        let mut offset = MAGIC.len() as u64;
        let mut flush = |frame: &mut Vec<u8>| -> std::io::Result<()> {
            if frame.is_empty() {
                return Ok(());
            }
            let mut header = [0u8; 8];
            header[..4].copy_from_slice(&(frame.len() as u32).to_le_bytes());
            header[4..].copy_from_slice(&frame_crc(frame).to_le_bytes());
            file.write_all_at(&header, offset)?;
            file.write_all_at(frame, offset + FRAME_HEADER)?;
            offset += FRAME_HEADER + frame.len() as u64;
            frame.clear();
            Ok(())
        };
        for (table, rows) in &scan.tables {
            for (name, value) in rows.live() {
                encode_row(&mut frame, table, name, Some(ValueRef::Bytes(value)))
                    .expect("bytes always encode");
                if frame.len() >= SNAPSHOT_FRAME {
                    flush(&mut frame)?;
                }
            }
        }
        flush(&mut frame)?;
        file.sync_data()?;
        Ok(offset)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&staging);
        io(&staging)(e)
    })
}

/// An error and its sources, as one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Writes a new log (magic, then what `body` writes) beside `path`, syncs it and renames it
/// over `path`.
fn write_new(path: &Path, body: impl FnOnce(&File) -> std::io::Result<()>) -> Result<(), LogError> {
    let staging = staging_path(path);
    let written = (|| {
        let file = File::create(&staging)?;
        file.write_all_at(MAGIC, 0)?;
        body(&file)?;
        file.sync_all()?;
        std::fs::rename(&staging, path)?;
        sync_dir(path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&staging);
        io(path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(scan: &Scan, table: &str) -> Vec<(String, Vec<u8>)> {
        scan.tables
            .get(table)
            .map(|t| t.live().map(|(n, v)| (n.to_owned(), v.to_vec())).collect())
            .unwrap_or_default()
    }

    #[test]
    fn rows_come_back_in_first_write_order_with_updates_and_deletes_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        {
            let (mut log, _) = LogFile::open(&path).unwrap();
            let put = |n: &'static str, v: &'static [u8]| ("t", n, Some(ValueRef::Bytes(v)));
            log.append([put("b", b"1"), put("a", b"1")].into_iter(), true)
                .unwrap();
            log.append([put("b", b"2"), put("c", b"1")].into_iter(), false)
                .unwrap();
            log.append([("t", "a", None)].into_iter(), true).unwrap();
        }
        let (_, scan) = LogFile::open(&path).unwrap();
        assert_eq!(
            rows(&scan, "t"),
            [
                ("b".to_owned(), b"2".to_vec()),
                ("c".to_owned(), b"1".to_vec())
            ]
        );
    }

    #[test]
    fn a_torn_or_corrupt_last_frame_is_cut_off_and_the_frames_before_it_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let good_len = {
            let (mut log, _) = LogFile::open(&path).unwrap();
            log.append(
                [("t", "kept", Some(ValueRef::Bytes(b"v")))].into_iter(),
                true,
            )
            .unwrap();
            let good_len = log.len;
            log.append(
                [("t", "torn", Some(ValueRef::Bytes(b"w")))].into_iter(),
                true,
            )
            .unwrap();
            good_len
        };
        let full = std::fs::read(&path).unwrap();
        // A crash mid-write: the last frame is short. Then: its bytes are garbage.
        for damaged in [
            full[..full.len() - 3].to_vec(),
            [&full[..full.len() - 1], b"X"].concat(),
        ] {
            std::fs::write(&path, &damaged).unwrap();
            let (log, scan) = LogFile::open(&path).unwrap();
            assert_eq!(rows(&scan, "t"), [("kept".to_owned(), b"v".to_vec())]);
            assert_eq!(log.len, good_len);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        }
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(matches!(
            LogFile::open(&path),
            Err(LogError::NotALog { .. })
        ));
    }

    /// A log of 20 MB in which 10 records of 1 KB are live (`r0` to `r9`), due for compaction.
    fn mostly_dead_log(path: &Path) -> LogFile {
        let (mut log, _) = LogFile::open(path).unwrap();
        let value = vec![7u8; 1000];
        for round in 0..20_000 {
            let name = format!("r{}", round % 10);
            let row = ("t", name.as_str(), Some(ValueRef::Bytes(value.as_slice())));
            log.append([row].into_iter(), false).unwrap();
        }
        log
    }

    #[test]
    fn compaction_keeps_exactly_the_live_records_and_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut log = mostly_dead_log(&path);
        log.append([("t", "r9", None)].into_iter(), true).unwrap();
        assert!(log.wants_compaction());
        log.compact();
        assert!(!log.wants_compaction());
        assert!(log.len < 20_000, "compacted to {} bytes", log.len);
        log.append(
            [("t", "after", Some(ValueRef::Bytes(b"x")))].into_iter(),
            true,
        )
        .unwrap();
        drop(log);
        let (_, scan) = LogFile::open(&path).unwrap();
        let names: Vec<String> = rows(&scan, "t").into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "after"
            ]
        );
        assert!(!dir.path().join("t.log-new").exists());
    }

    #[test]
    fn frames_written_while_a_compaction_runs_are_kept_when_it_is_swapped_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut log = mostly_dead_log(&path);
        log.maintain();
        assert!(log.compaction.is_some(), "started");
        // Written after the snapshot point: a new record, an update and a deletion.
        let later = [
            ("t", "new", Some(ValueRef::Bytes(b"n"))),
            ("t", "r0", Some(ValueRef::Bytes(b"updated"))),
            ("t", "r1", None),
        ];
        log.append(later.into_iter(), true).unwrap();
        log.finish_compaction();
        assert!(log.len < 20_000, "compacted to {} bytes", log.len);
        drop(log);
        let (_, scan) = LogFile::open(&path).unwrap();
        let rows = rows(&scan, "t");
        let names: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["r0", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "new"]
        );
        assert_eq!(rows[0].1, b"updated");
        assert!(!staging_path(&path).exists());
    }
}
