//! The DAG Manager's gRPC client as its callers use it: connect with the right transport
//! settings, and consume a diff stream as the Python Gateway does (ack every chunk, check that
//! every chunk carries the same CRC32, merge the queue maps).

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
    #[error("{address} is not a valid DAG Manager address")]
    InvalidAddress { address: String },
    #[error("could not reach the DAG Manager at {address}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("DAG Manager refused the diff")]
    Status(#[from] tonic::Status),
    #[error("chunk {chunk} carries CRC32 {found:?}, the stream began with {expected:?}")]
    CrcMismatch {
        chunk: u32,
        expected: Option<u32>,
        found: Option<u32>,
    },
}

/// HTTP/2 windows large enough that a multi-megabyte DAG or diff crosses in one flight.
pub const STREAM_WINDOW_BYTES: u32 = 4 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 8 << 20;

/// Connects to a DAG Manager (`host:port` or a URI), with Nagle off and large HTTP/2 windows.
pub async fn connect(address: &str) -> Result<Channel, ClientError> {
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let endpoint = Channel::from_shared(uri).map_err(|_| ClientError::InvalidAddress {
        address: address.to_owned(),
    })?;
    endpoint
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            address: address.to_owned(),
            source,
        })
}

/// Chunk acks on their way at once, per diff.
const ACKS_IN_FLIGHT: usize = 3;

/// Runs one diff and collects its chunks. Each chunk is acknowledged as it arrives, in the
/// background: an ack's answer carries nothing, and a lost ack only holds the server's window,
/// which the server's own timeout handles.
pub async fn collect_diff(
    client: &mut DiffServiceClient<Channel>,
    request: DiffRequest,
) -> Result<CollectedDiff, ClientError> {
    // The caller's span continues in the DAG Manager (W3C trace context in the metadata).
    let mut call = tonic::Request::new(request);
    if let Some((parent, state)) = kit::trace::context_of(&tracing::Span::current()) {
        let metadata = call.metadata_mut();
        if let Ok(value) = parent.parse() {
            metadata.insert(kit::trace::TRACEPARENT, value);
        }
        if let Some(value) = state.and_then(|s| s.parse().ok()) {
            metadata.insert(kit::trace::TRACESTATE, value);
        }
    }
    let mut stream = client.diff(call).await?.into_inner();
    let mut collected = CollectedDiff::default();
    // One background task sends the acks as chunks arrive, a few at a time: one at a time holds
    // a long stream to the acks' round trips once the server's window fills, and one task per
    // ack has them all compete with the stream for the cores.
    let (acks, mut to_ack) = tokio::sync::mpsc::unbounded_channel::<ChunkAck>();
    let ack_client = client.clone();
    tokio::spawn(async move {
        let mut in_flight = tokio::task::JoinSet::new();
        while let Some(ack) = to_ack.recv().await {
            if in_flight.len() >= ACKS_IN_FLIGHT {
                in_flight.join_next().await;
            }
            let mut ack_client = ack_client.clone();
            in_flight.spawn(async move {
                if let Err(status) = ack_client.ack_chunk(ack).await {
                    tracing::debug!(code = ?status.code(), "A diff chunk ack was not delivered.");
                }
            });
        }
        while in_flight.join_next().await.is_some() {}
    });
    while let Some(chunk) = stream.message().await? {
        let chunk_id = collected.chunks;
        let _ = acks.send(ChunkAck {
            sentinel_id: chunk.sentinel_id.clone(),
            chunk_id,
        });
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
