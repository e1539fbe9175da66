//! A DiffService client that consumes a diff stream as the Python Gateway does: ack every
//! chunk, check that every chunk carries the same CRC32, merge the queue maps.

use proto::diff_service_client::DiffServiceClient;
use proto::{BufferInstruction, ChunkAck, DiffRequest};
use std::collections::BTreeMap;
use tonic::transport::Channel;

/// A whole diff as the client saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectedDiff {
    pub sentinel_id: String,
    pub version: String,
    pub crc32: Option<u32>,
    pub queue_map: BTreeMap<String, String>,
    pub buffer_nodes: Vec<BufferInstruction>,
    pub chunks: u32,
}

/// Why a diff could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("DAG Manager refused the diff")]
    Status(#[from] tonic::Status),
    #[error("chunk {chunk} carries CRC32 {found:?}, the stream began with {expected:?}")]
    CrcMismatch {
        chunk: u32,
        expected: Option<u32>,
        found: Option<u32>,
    },
}

/// Runs one diff and collects its chunks, acknowledging each.
pub async fn collect_diff(
    client: &mut DiffServiceClient<Channel>,
    request: DiffRequest,
) -> Result<CollectedDiff, ClientError> {
    let mut stream = client.diff(request).await?.into_inner();
    let mut collected = CollectedDiff::default();
    while let Some(chunk) = stream.message().await? {
        let chunk_id = collected.chunks;
        client
            .ack_chunk(ChunkAck {
                sentinel_id: chunk.sentinel_id.clone(),
                chunk_id,
            })
            .await?;
        if chunk_id == 0 {
            collected.crc32 = chunk.crc32;
        } else if chunk.crc32 != collected.crc32 {
            return Err(ClientError::CrcMismatch {
                chunk: chunk_id,
                expected: collected.crc32,
                found: chunk.crc32,
            });
        }
        collected.chunks += 1;
        collected.sentinel_id = chunk.sentinel_id;
        if !chunk.version.is_empty() {
            collected.version = chunk.version;
        }
        collected.queue_map.extend(chunk.queue_map);
        collected.buffer_nodes.extend(chunk.buffer_nodes);
    }
    Ok(collected)
}
