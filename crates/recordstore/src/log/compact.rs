//! Compaction: the log rewritten to its live records on a thread of its own, then swapped in.
//!
//! A log is rewritten when it grows to twice its live records. Commits go on meanwhile; the
//! frames committed during the rewrite are copied after it before it is renamed over the log.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::frame::{self, FRAME_HEADER, MAGIC, ValueRef, encode_row, scan_upto};
use super::{LogError, LogFile, error_chain, io, staging_path, sync_dir};

/// A log smaller than this is never compacted.
const COMPACT_MIN: u64 = 16 << 20;
/// Payload size of the frames a compaction writes.
const SNAPSHOT_FRAME: usize = 4 << 20;

/// A compaction in progress: a thread writing the live records of the log's first `from_len`
/// bytes to the staging file. Frames appended meanwhile are copied over when it finishes.
#[derive(Debug)]
pub(super) struct Compaction {
    from_len: u64,
    thread: std::thread::JoinHandle<Result<u64, LogError>>,
}

impl LogFile {
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
            file.write_all_at(&frame::header(frame), offset)?;
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

#[cfg(test)]
mod tests {
    use super::super::tests::rows;
    use super::*;

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
