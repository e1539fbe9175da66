//! DiffService: a diff's answer as a chunked stream kept within an acknowledgement window, whose
//! last chunk waits for the diff's durable commit.

use foldhash::HashMap;
use proto::diff_service_server::DiffService;
use proto::{ChunkAck, DiffChunk, DiffRequest};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::diff::{DiffEngine, DiffInput, DiffOutcome};

/// Most nodes one chunk carries (wire.md).
pub const MAX_CHUNK_NODES: usize = 100;

/// How diff streams wait for acknowledgements.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    pub chunk_size: usize,
    pub ack_window: usize,
    pub ack_timeout: Duration,
    pub ack_retries: u32,
}

/// One open diff stream's ack counter.
#[derive(Debug)]
struct StreamAcks {
    sent: AtomicU32,
    acked: watch::Sender<u32>,
}

/// Open streams by sentinel id. Clients ack with the sentinel id (the Python Gateway always sends
/// chunk_id 0), so an ack goes to the oldest stream of that sentinel still waiting for one; a
/// late ack of a finished stream may credit a newer stream of the same strategy, which at worst
/// lets that stream run one chunk further ahead.
#[derive(Debug, Default)]
pub struct AckRegistry {
    streams: Mutex<HashMap<String, VecDeque<Arc<StreamAcks>>>>,
}

impl AckRegistry {
    fn register(&self, sentinel_id: &str) -> Arc<StreamAcks> {
        let stream = Arc::new(StreamAcks {
            sent: AtomicU32::new(0),
            acked: watch::channel(0).0,
        });
        self.lock()
            .entry(sentinel_id.to_owned())
            .or_default()
            .push_back(stream.clone());
        stream
    }

    fn unregister(&self, sentinel_id: &str, stream: &Arc<StreamAcks>) {
        let mut streams = self.lock();
        if let Some(list) = streams.get_mut(sentinel_id) {
            list.retain(|s| !Arc::ptr_eq(s, stream));
            if list.is_empty() {
                streams.remove(sentinel_id);
            }
        }
    }

    fn ack(&self, sentinel_id: &str) -> bool {
        let streams = self.lock();
        let Some(list) = streams.get(sentinel_id) else {
            return false;
        };
        let waiting = list
            .iter()
            .find(|s| *s.acked.borrow() < s.sent.load(Ordering::SeqCst))
            .or_else(|| list.front());
        match waiting {
            Some(stream) => {
                stream.acked.send_modify(|acked| *acked += 1);
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Arc<StreamAcks>>>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A diff's answer cut into chunks of at most `chunk_size` queue-map entries and buffer
/// instructions; every chunk carries the sentinel, version and the DAG's CRC32. A chunk is built
/// when it is sent (again, if it must be re-sent), so none is held twice.
#[derive(Debug)]
pub(crate) struct Chunks {
    outcome: DiffOutcome,
    size: usize,
}

impl Chunks {
    pub(crate) fn new(outcome: DiffOutcome, chunk_size: usize) -> Chunks {
        Chunks {
            outcome,
            size: chunk_size.clamp(1, MAX_CHUNK_NODES),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.outcome
            .queue_map
            .len()
            .div_ceil(self.size)
            .max(self.outcome.buffer_nodes.len().div_ceil(self.size))
            .max(1)
    }

    /// Chunk `index` (< `len()`).
    pub(crate) fn chunk(&self, index: usize) -> DiffChunk {
        let part = |len: usize| (index * self.size).min(len)..((index + 1) * self.size).min(len);
        let outcome = &self.outcome;
        DiffChunk {
            queue_map: outcome.queue_map[part(outcome.queue_map.len())]
                .iter()
                .cloned()
                .collect(),
            sentinel_id: outcome.sentinel_id.clone(),
            buffer_nodes: outcome.buffer_nodes[part(outcome.buffer_nodes.len())].to_vec(),
            version: outcome.version.clone(),
            crc32: Some(outcome.crc32),
        }
    }
}

/// The durable commit a diff's last chunk waits for.
type Commit = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// Sends chunks keeping at most `ack_window` unacknowledged, which is what acks are for: the
/// stream is reliable, so they bound how far the server runs ahead of a slow client. While the
/// window is full, an ack timeout re-sends the unacknowledged chunks, and `ack_retries` timeouts
/// in a row end the stream with DEADLINE_EXCEEDED. The stream ends as soon as the last chunk is
/// sent; acks that arrive after that are answered and ignored.
///
/// The chunks go out while the diff's writes are committed: only the last one waits for
/// `commit` (taken from it), and if the commit fails the stream ends with that error instead, so
/// a client never holds a complete answer the graph could lose.
async fn send_with_acks(
    chunks: Chunks,
    sender: mpsc::Sender<Result<DiffChunk, Status>>,
    stream: Arc<StreamAcks>,
    settings: StreamSettings,
    commit: &mut Option<Commit>,
) {
    let total = chunks.len();
    let window = settings.ack_window.max(1);
    let mut acked_rx = stream.acked.subscribe();
    let mut sent = 0usize;
    let mut timeouts = 0u32;
    loop {
        let acked = (*acked_rx.borrow_and_update() as usize).min(total);
        while sent < total && sent - acked.min(sent) < window {
            if sent + 1 == total
                && let Some(pending) = commit.take()
                && let Err(status) = pending.await
            {
                let _ = sender.send(Err(status)).await;
                return;
            }
            if sender.send(Ok(chunks.chunk(sent))).await.is_err() {
                return;
            }
            sent += 1;
            stream.sent.store(sent as u32, Ordering::SeqCst);
        }
        if sent >= total {
            return;
        }
        match tokio::time::timeout(settings.ack_timeout, acked_rx.changed()).await {
            Ok(Ok(())) => timeouts = 0,
            Ok(Err(_)) => return,
            Err(_) => {
                timeouts += 1;
                if timeouts > settings.ack_retries {
                    tracing::warn!(
                        code = "E_ACK_TIMEOUT",
                        acked,
                        total,
                        "Client did not acknowledge diff chunks; ending the stream."
                    );
                    let _ = sender
                        .send(Err(Status::deadline_exceeded(format!(
                            "E_ACK_TIMEOUT: client acknowledged {acked} of {total} diff chunks"
                        ))))
                        .await;
                    return;
                }
                for index in acked..sent {
                    if sender.send(Ok(chunks.chunk(index))).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// DiffService.
#[derive(Debug, Clone)]
pub struct DiffServer {
    pub engine: Arc<DiffEngine>,
    pub acks: Arc<AckRegistry>,
    pub stream: StreamSettings,
}

fn input_of(request: DiffRequest) -> DiffInput {
    DiffInput {
        strategy_id: request.strategy_id,
        dag_json: request.dag_json,
        context: wire::ComputeContext {
            world_id: request.world_id,
            execution_domain: request.execution_domain,
            as_of: request.as_of,
            partition: request.partition,
            dataset_fingerprint: request.dataset_fingerprint,
        },
    }
}

#[tonic::async_trait]
impl DiffService for DiffServer {
    type DiffStream = ReceiverStream<Result<DiffChunk, Status>>;

    #[tracing::instrument(name = "dagmanager.diff", skip_all, fields(strategy_id = %request.get_ref().strategy_id))]
    async fn diff(
        &self,
        request: Request<DiffRequest>,
    ) -> Result<Response<Self::DiffStream>, Status> {
        let metadata = |key: &str| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (parent, state) = (
            metadata(kit::trace::TRACEPARENT),
            metadata(kit::trace::TRACESTATE),
        );
        let request = request.into_inner();
        let span = tracing::info_span!(
            "dagmanager.diff",
            otel.kind = "server",
            strategy_id = %request.strategy_id,
            world_id = %request.world_id,
            execution_domain = %request.execution_domain,
        );
        kit::trace::continue_from(&span, parent.as_deref(), state.as_deref());
        let (outcome, pending) = self
            .engine
            .stage(input_of(request))
            .instrument(span.clone())
            .await
            .map_err(|e| Status::from(&e))?
            .into_parts();
        let sentinel_id = outcome.sentinel_id.clone();
        let chunks = Chunks::new(outcome, self.stream.chunk_size);
        let mut commit: Option<Commit> = if chunks.len() == 1 {
            // Nothing to send while the commit runs: wait for it here, without another task.
            self.engine
                .settle(pending)
                .instrument(span)
                .await
                .map_err(|e| Status::from(&e))?;
            None
        } else {
            // The commit is awaited on a task of its own, so the diff ends (and is timed) as
            // soon as it is durable, whatever the stream is doing.
            let engine = self.engine.clone();
            let settled = tokio::spawn(
                async move { engine.settle(pending).await.map_err(|e| Status::from(&e)) }
                    .instrument(span),
            );
            Some(Box::pin(async move {
                settled.await.unwrap_or_else(|error| {
                    Err(Status::internal(format!(
                        "E_INTERNAL: the diff's commit task failed: {error}"
                    )))
                })
            }))
        };
        let (sender, receiver) = mpsc::channel(self.stream.ack_window.max(1) + 1);
        let acks = self.acks.clone();
        let stream = acks.register(&sentinel_id);
        let settings = self.stream;
        tokio::spawn(async move {
            send_with_acks(chunks, sender, stream.clone(), settings, &mut commit).await;
            acks.unregister(&sentinel_id, &stream);
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn ack_chunk(&self, request: Request<ChunkAck>) -> Result<Response<ChunkAck>, Status> {
        let ack = request.into_inner();
        self.acks.ack(&ack.sentinel_id);
        Ok(Response::new(ack))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(nodes: usize) -> DiffOutcome {
        DiffOutcome {
            sentinel_id: "s-sentinel".into(),
            version: "v1".into(),
            crc32: 42,
            queue_map: (0..nodes)
                .map(|i| (format!("k{i}"), format!("t{i}")))
                .collect(),
            buffer_nodes: Vec::new(),
            new_nodes: nodes,
            reused_nodes: 0,
        }
    }

    fn unacked_settings() -> StreamSettings {
        StreamSettings {
            chunk_size: 100,
            ack_window: 10,
            ack_timeout: Duration::from_secs(30),
            ack_retries: 0,
        }
    }

    fn stream_acks() -> Arc<StreamAcks> {
        AckRegistry::default().register("s-sentinel")
    }

    /// Every chunk but the last goes out while the commit runs; the last waits for it.
    #[tokio::test]
    async fn only_the_last_chunk_waits_for_the_commit() {
        let (committed, commit_done) = tokio::sync::oneshot::channel::<()>();
        let (awaiting, commit_awaited) = tokio::sync::oneshot::channel::<()>();
        let mut commit: Option<Commit> = Some(Box::pin(async move {
            let _ = awaiting.send(());
            commit_done.await.expect("the test commits");
            Ok(())
        }));
        let (sender, mut receiver) = mpsc::channel(16);
        let sending = tokio::spawn(async move {
            let chunks = Chunks::new(outcome(250), 100);
            send_with_acks(
                chunks,
                sender,
                stream_acks(),
                unacked_settings(),
                &mut commit,
            )
            .await;
            commit.is_none()
        });
        for _ in 0..2 {
            let chunk = tokio::time::timeout(Duration::from_secs(5), receiver.recv())
                .await
                .expect("chunks go out before the commit ends")
                .expect("a chunk")
                .expect("not an error");
            assert_eq!(chunk.queue_map.len(), 100);
        }
        // Once the sender awaits the commit, the last chunk has had its chance to go first.
        tokio::time::timeout(Duration::from_secs(5), commit_awaited)
            .await
            .expect("the sender awaits the commit")
            .expect("the commit is polled");
        assert!(
            receiver.try_recv().is_err(),
            "the last chunk went out before the commit"
        );
        committed.send(()).expect("the sender waits");
        let last = receiver
            .recv()
            .await
            .expect("the last chunk")
            .expect("not an error");
        assert_eq!(last.queue_map.len(), 50);
        assert!(receiver.recv().await.is_none(), "the stream ends after it");
        assert!(sending.await.unwrap(), "the commit was awaited");
    }

    /// A commit that fails ends the stream with its error in place of the last chunk.
    #[tokio::test]
    async fn a_failed_commit_ends_the_stream_with_its_error_instead_of_the_last_chunk() {
        for nodes in [1, 250] {
            let mut commit: Option<Commit> = Some(Box::pin(async {
                Err(Status::unavailable("E_GRAPH_STORE: disk full"))
            }));
            let (sender, mut receiver) = mpsc::channel(16);
            let chunks = Chunks::new(outcome(nodes), 100);
            let total = chunks.len();
            send_with_acks(
                chunks,
                sender,
                stream_acks(),
                unacked_settings(),
                &mut commit,
            )
            .await;
            let mut received = Vec::new();
            while let Some(item) = receiver.recv().await {
                received.push(item);
            }
            assert_eq!(received.len(), total, "{nodes} nodes");
            assert!(received[..total - 1].iter().all(Result::is_ok));
            let error = received[total - 1]
                .as_ref()
                .expect_err("the last is the error");
            assert_eq!(error.code(), tonic::Code::Unavailable);
        }
    }

    #[test]
    fn chunks_hold_at_most_one_hundred_nodes_and_all_carry_the_crc() {
        let chunks = Chunks::new(outcome(250), 500);
        assert_eq!(chunks.len(), 3);
        let chunks: Vec<DiffChunk> = (0..chunks.len()).map(|i| chunks.chunk(i)).collect();
        assert_eq!(chunks.iter().map(|c| c.queue_map.len()).sum::<usize>(), 250);
        assert!(
            chunks
                .iter()
                .all(|c| c.crc32 == Some(42) && c.queue_map.len() <= 100)
        );
        let keys: std::collections::BTreeSet<&String> =
            chunks.iter().flat_map(|c| c.queue_map.keys()).collect();
        assert_eq!(keys.len(), 250);
    }
}
