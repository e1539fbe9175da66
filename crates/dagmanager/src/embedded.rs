//! The redb plumbing the embedded graph store and queue registry share: open a database file
//! with its tables, read a table's JSON records, write upserts and deletions in one transaction.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;

/// A JSON-record table keyed by name.
pub type Table = TableDefinition<'static, &'static str, &'static [u8]>;

/// A key and its new record; `None` deletes the key.
pub type Row = (String, Option<Vec<u8>>);

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

/// Opens (or creates) `dir/file` and makes sure every table exists.
pub fn open(
    dir: &Path,
    file: &str,
    tables: &[Table],
) -> Result<Arc<redb::Database>, EmbeddedError> {
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
    Ok(Arc::new(db))
}

/// Every record of a table, decoded.
pub fn read_all<T: DeserializeOwned>(
    db: &redb::Database,
    table: Table,
) -> Result<Vec<T>, EmbeddedError> {
    let read = db.begin_read().map_err(storage)?;
    let table = read.open_table(table).map_err(storage)?;
    let mut records = Vec::new();
    for entry in table.iter().map_err(storage)? {
        let (_, value) = entry.map_err(storage)?;
        records.push(serde_json::from_slice(value.value())?);
    }
    Ok(records)
}

/// Encodes records as rows keyed by `key`.
pub fn rows<T: serde::Serialize>(
    records: &[T],
    key: impl Fn(&T) -> String,
) -> Result<Vec<Row>, EmbeddedError> {
    records
        .iter()
        .map(|record| Ok((key(record), Some(serde_json::to_vec(record)?))))
        .collect()
}

/// Deletion rows for `keys`.
pub fn deletions(keys: &[String]) -> Vec<Row> {
    keys.iter().map(|k| (k.clone(), None)).collect()
}

/// Writes every batch in one durable transaction, on a blocking thread.
pub async fn write(
    db: Arc<redb::Database>,
    batches: Vec<(Table, Vec<Row>)>,
) -> Result<(), EmbeddedError> {
    if batches.iter().all(|(_, rows)| rows.is_empty()) {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || -> Result<(), EmbeddedError> {
        let write = db.begin_write().map_err(storage)?;
        for (table, rows) in batches {
            let mut table = write.open_table(table).map_err(storage)?;
            for (key, value) in rows {
                match value {
                    Some(bytes) => table.insert(key.as_str(), bytes.as_slice()).map(|_| ()),
                    None => table.remove(key.as_str()).map(|_| ()),
                }
                .map_err(storage)?;
            }
        }
        write.commit().map_err(storage)?;
        Ok(())
    })
    .await?
}

/// A cheap read that proves the file answers.
pub async fn probe(db: Arc<redb::Database>, table: Table) -> Result<(), EmbeddedError> {
    tokio::task::spawn_blocking(move || -> Result<(), EmbeddedError> {
        db.begin_read()
            .map_err(storage)?
            .open_table(table)
            .map_err(storage)?;
        Ok(())
    })
    .await?
}
