//! Import of the redb file an earlier version kept: JSON records under `u64` keys.
//!
//! Opening reads its tables; [`crate::EmbeddedDb::read_all`] names and appends each table's
//! records to the log; once every table is in, the old file is renamed `*.redb.imported`. A
//! crash during the import leaves the old file in place, and the next open starts the import
//! again on an empty log.

use crate::{EmbeddedError, Table, log::LogError};
use foldhash::HashMap;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

/// An import under way: the tables not yet read, with their values in key order.
#[derive(Debug)]
pub(crate) struct Import {
    path: PathBuf,
    tables: HashMap<&'static str, Vec<Vec<u8>>>,
}

impl Import {
    /// The import to do, if `legacy` exists; then `log` is (re)started empty.
    pub(crate) fn find(
        legacy: &Path,
        log: &Path,
        tables: &[Table],
    ) -> Result<Option<Import>, EmbeddedError> {
        if !legacy.exists() {
            return Ok(None);
        }
        let failed = |source: redb::Error| EmbeddedError::Legacy {
            path: legacy.display().to_string(),
            source,
        };
        let db = redb::Database::open(legacy).map_err(|e| failed(e.into()))?;
        let read = db.begin_read().map_err(|e| failed(e.into()))?;
        let mut values = HashMap::default();
        for table in tables {
            let definition: TableDefinition<'_, u64, &[u8]> = TableDefinition::new(table.name());
            let rows = match read.open_table(definition) {
                Ok(opened) => opened
                    .iter()
                    .map_err(|e| failed(e.into()))?
                    .map(|entry| entry.map(|(_, value)| value.value().to_vec()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| failed(e.into()))?,
                Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
                Err(e) => return Err(failed(e.into())),
            };
            values.insert(table.name(), rows);
        }
        if log.exists() {
            std::fs::remove_file(log).map_err(|source| LogError::Io {
                path: log.display().to_string(),
                source,
            })?;
        }
        tracing::info!(path = %legacy.display(), "Importing an earlier version's database.");
        Ok(Some(Import {
            path: legacy.to_owned(),
            tables: values,
        }))
    }

    /// The values of `table`, if it is still to import.
    pub(crate) fn take(&mut self, table: Table) -> Option<Vec<Vec<u8>>> {
        self.tables.remove(table.name())
    }

    pub(crate) fn is_done(&self) -> bool {
        self.tables.is_empty()
    }

    /// Renames the imported file out of the way (kept as a backup).
    pub(crate) fn retire(self) -> Result<(), EmbeddedError> {
        let mut retired = self.path.clone().into_os_string();
        retired.push(".imported");
        std::fs::rename(&self.path, &retired).map_err(|source| LogError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        tracing::info!(path = %self.path.display(), "Imported an earlier version's database; the old file was kept beside the log with the suffix .imported.");
        Ok(())
    }
}
