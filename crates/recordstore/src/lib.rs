//! Durable tables of JSON records in an embedded redb file (crash-safe: every write is one
//! durable transaction). Records are JSON values stored under increasing `u64` keys, with the name → key map in memory: new records append at
//! the right edge of the B-tree, where random ids as keys would dirty a page per insert and make
//! every commit rewrite much of the file.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A JSON-record table under storage keys.
pub type Table = TableDefinition<'static, u64, &'static [u8]>;

/// Names a table.
pub const fn table(name: &'static str) -> Table {
    TableDefinition::new(name)
}

/// A record's name and its new JSON; `None` deletes it.
pub type Row = (String, Option<Vec<u8>>);

/// A row under its storage key.
type KeyedRow = (u64, Option<Vec<u8>>);

/// Why embedded storage failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("database file {path} could not be opened")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("database I/O failed")]
    Storage(#[from] redb::Error),
    #[error("a stored record could not be encoded or decoded")]
    Codec(#[from] serde_json::Error),
    #[error("database task failed")]
    Task(#[from] tokio::task::JoinError),
}

fn storage<E: Into<redb::Error>>(error: E) -> EmbeddedError {
    EmbeddedError::Storage(error.into())
}

/// One table's record names and their storage keys.
#[derive(Debug, Default)]
struct Keys {
    by_name: HashMap<String, u64>,
    next: u64,
}

/// A redb database file of JSON-record tables.
#[derive(Debug)]
pub struct EmbeddedDb {
    db: Arc<redb::Database>,
    keys: Mutex<HashMap<String, Keys>>,
    /// One write at a time, so storage keys are handed out in commit order.
    writes: tokio::sync::Mutex<()>,
}

impl EmbeddedDb {
    /// Opens (or creates) `dir/file` and makes sure every table exists.
    pub fn open(dir: &Path, file: &str, tables: &[Table]) -> Result<EmbeddedDb, EmbeddedError> {
        std::fs::create_dir_all(dir).map_err(|e| storage(redb::StorageError::Io(e)))?;
        let path = dir.join(file);
        let db = redb::Database::create(&path).map_err(|source| EmbeddedError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let write = db.begin_write().map_err(storage)?;
        for table in tables {
            write.open_table(*table).map_err(storage)?;
        }
        write.commit().map_err(storage)?;
        Ok(EmbeddedDb {
            db: Arc::new(db),
            keys: Mutex::new(HashMap::new()),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, Keys>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every record of a table, decoded; `name` tells each record's name.
    pub fn read_all<T: DeserializeOwned>(
        &self,
        table: Table,
        name: impl Fn(&T) -> String,
    ) -> Result<Vec<T>, EmbeddedError> {
        let read = self.db.begin_read().map_err(storage)?;
        let opened = read.open_table(table).map_err(storage)?;
        let mut records = Vec::new();
        let mut keys = Keys::default();
        for entry in opened.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let record: T = serde_json::from_slice(value.value())?;
            keys.by_name.insert(name(&record), key.value());
            keys.next = keys.next.max(key.value() + 1);
            records.push(record);
        }
        self.keys().insert(table.name().to_owned(), keys);
        Ok(records)
    }

    /// Writes every batch in one durable transaction, on a blocking thread.
    pub async fn write(&self, batches: Vec<(Table, Vec<Row>)>) -> Result<(), EmbeddedError> {
        if batches.iter().all(|(_, rows)| rows.is_empty()) {
            return Ok(());
        }
        let _write = self.writes.lock().await;
        let mut deleted: Vec<(String, String)> = Vec::new();
        let keyed: Vec<(Table, Vec<KeyedRow>)> = {
            let mut all_keys = self.keys();
            batches
                .into_iter()
                .map(|(table, rows)| {
                    let keys = all_keys.entry(table.name().to_owned()).or_default();
                    let rows = rows
                        .into_iter()
                        .filter_map(|(name, value)| match value {
                            Some(bytes) => {
                                let key = match keys.by_name.get(&name) {
                                    Some(key) => *key,
                                    None => {
                                        let key = keys.next;
                                        keys.next += 1;
                                        keys.by_name.insert(name, key);
                                        key
                                    }
                                };
                                Some((key, Some(bytes)))
                            }
                            None => {
                                let key = *keys.by_name.get(&name)?;
                                deleted.push((table.name().to_owned(), name));
                                Some((key, None))
                            }
                        })
                        .collect();
                    (table, rows)
                })
                .collect()
        };
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), EmbeddedError> {
            let write = db.begin_write().map_err(storage)?;
            for (table, rows) in keyed {
                if rows.is_empty() {
                    continue;
                }
                let mut table = write.open_table(table).map_err(storage)?;
                for (key, value) in rows {
                    match value {
                        Some(bytes) => table.insert(key, bytes.as_slice()).map(|_| ()),
                        None => table.remove(key).map(|_| ()),
                    }
                    .map_err(storage)?;
                }
            }
            write.commit().map_err(storage)?;
            Ok(())
        })
        .await??;
        let mut all_keys = self.keys();
        for (table, name) in deleted {
            if let Some(keys) = all_keys.get_mut(&table) {
                keys.by_name.remove(&name);
            }
        }
        Ok(())
    }

    /// A cheap read that proves the file answers.
    pub async fn probe(&self, table: Table) -> Result<(), EmbeddedError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), EmbeddedError> {
            db.begin_read()
                .map_err(storage)?
                .open_table(table)
                .map_err(storage)?;
            Ok(())
        })
        .await?
    }
}

/// Encodes records as rows named by `name`.
pub fn rows<T: serde::Serialize>(
    records: &[T],
    name: impl Fn(&T) -> String,
) -> Result<Vec<Row>, EmbeddedError> {
    records
        .iter()
        .map(|record| Ok((name(record), Some(serde_json::to_vec(record)?))))
        .collect()
}

/// Deletion rows for `names`.
pub fn deletions(names: &[String]) -> Vec<Row> {
    names.iter().map(|k| (k.clone(), None)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Table = table("t");

    #[tokio::test]
    async fn records_survive_a_reopen_and_updates_and_deletes_find_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let name = |v: &serde_json::Value| v["name"].as_str().unwrap().to_owned();
        {
            let db = EmbeddedDb::open(dir.path(), "x.redb", &[T]).unwrap();
            assert!(db.read_all(T, name).unwrap().is_empty());
            let records = [
                serde_json::json!({"name": "b", "v": 1}),
                serde_json::json!({"name": "a", "v": 1}),
            ];
            db.write(vec![(T, rows(&records, name).unwrap())])
                .await
                .unwrap();
        }
        let db = EmbeddedDb::open(dir.path(), "x.redb", &[T]).unwrap();
        assert_eq!(db.read_all(T, name).unwrap().len(), 2);
        let updated = [
            serde_json::json!({"name": "b", "v": 2}),
            serde_json::json!({"name": "c", "v": 1}),
        ];
        db.write(vec![(T, rows(&updated, name).unwrap())])
            .await
            .unwrap();
        db.write(vec![(T, deletions(&["a".to_owned()]))])
            .await
            .unwrap();
        let mut names: Vec<(String, i64)> = db
            .read_all(T, name)
            .unwrap()
            .iter()
            .map(|v| (name(v), v["v"].as_i64().unwrap()))
            .collect();
        names.sort();
        assert_eq!(names, [("b".to_owned(), 2), ("c".to_owned(), 1)]);
    }
}
