//! The log file: opening it (a torn last frame cut off), one frame appended per commit, poisoning.
//!
//! The format is `frame`'s; compaction is `compact`'s.
//!
//! One commit is one frame, written with one `pwrite` (and an `fdatasync` when durable), so a
//! crash leaves at most a torn last frame, which the checksum exposes and opening cuts off. A
//! durable commit's sync also covers every lazy frame before it: order on disk is queue order.

mod compact;
mod frame;

use foldhash::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use compact::Compaction;
use frame::{FRAME_HEADER, MAGIC, encode_row};
pub(crate) use frame::{Scan, TableScan, ValueRef, scan};

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
    #[error("the log {path} stopped accepting writes")]
    Poisoned {
        path: String,
        #[source]
        cause: Arc<Poison>,
    },
}

/// Why a log stopped accepting writes: what reached the disk is unknown until it is reopened.
#[derive(Debug, thiserror::Error)]
pub enum Poison {
    #[error("a sync failed")]
    Sync(#[source] std::io::Error),
    #[error("a failed write could not be cut off")]
    CutOff(#[source] std::io::Error),
}

/// An I/O error like `error` (same kind and message), for a poisoned log to keep while `error`
/// itself goes to the caller.
fn copy(error: &std::io::Error) -> std::io::Error {
    std::io::Error::new(error.kind(), error.to_string())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
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
    poisoned: Option<Arc<Poison>>,
    /// Frame under construction (kept to reuse its allocation).
    frame: Vec<u8>,
    /// A compaction running beside the writer.
    compaction: Option<Compaction>,
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
        if let Some(cause) = &self.poisoned {
            return Err(LogError::Poisoned {
                path: self.path.display().to_string(),
                cause: cause.clone(),
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
        if let Some(cause) = &self.poisoned {
            return Err(LogError::Poisoned {
                path: self.path.display().to_string(),
                cause: cause.clone(),
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
            let header = frame::header(&frame[FRAME_HEADER as usize..]);
            frame[..FRAME_HEADER as usize].copy_from_slice(&header);
            self.file.write_all_at(&frame, self.len)
        };
        let result = match written {
            Ok(()) if durable => self.file.sync_data().inspect_err(|e| {
                self.poisoned = Some(Arc::new(Poison::Sync(copy(e))));
            }),
            other => other,
        };
        let appended = frame.len() as u64 - FRAME_HEADER;
        self.frame = frame;
        if let Err(e) = result {
            // A write that failed part-way (a full disk) leaves bytes no frame owns.
            if self.file.set_len(self.len).is_err() && self.poisoned.is_none() {
                self.poisoned = Some(Arc::new(Poison::CutOff(copy(&e))));
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

/// An error and its sources, as one line, for this crate's own log lines (the services use
/// `kit::error::chain`; this crate does not depend on the kit).
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

    pub(super) fn rows(scan: &Scan, table: &str) -> Vec<(String, Vec<u8>)> {
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
}
