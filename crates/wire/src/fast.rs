//! A reader for DAG documents beside the serde one in `dag.rs`: on the documents clients send it
//! reads a 1000-node DAG in about three quarters of serde's instructions. It reads only what it
//! is sure of and gives up (`None`) on anything else: a syntax error, a number serde_json would
//! refuse, a field given twice, nesting deeper than [`scan::MAX_DEPTH`]. The serde reader then
//! reads the document and decides, so the two always answer alike;
//! `tests::both_readers_agree_on_generated_documents` holds them to that. Both read the fields
//! `bind` declares, into what it says.
//!
//! Strings without escapes are borrowed. Strings with escapes, and every number but a plain
//! non-negative integer, are decoded by serde_json itself, so their values are serde_json's.

mod bind;
mod scan;
#[cfg(test)]
mod tests;

pub(crate) use bind::{DocField, Field, FieldSource, NodeField, Seen, read};
