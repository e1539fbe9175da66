//! SDK runtime tests: strategies run offline and through a real Gateway and DAG Manager,
//! outputs checked against hand-computed values, metrics checked on the scraped endpoint.

mod catalogue;
mod kafka;
mod offline;
mod online;
mod support;
