//! Coalesces the idempotency calls of concurrent deliveries into batches: while a few batches
//! are at the store, the next one collects, so a busy consumer pays one round trip for many
//! messages and an idle one pays no wait at all.

use std::{future::Future, pin::Pin, sync::Arc, time::Instant};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Claim, IdempotencyError, IdempotencyStore};
use crate::consumer::metrics::ConsumerMetrics;

/// The most ids in one call to the store.
const MAX_BATCH: usize = 512;
/// Calls of one kind at the store at once. More than one, so that a call's round trip and the
/// store's work on it overlap with the next; few, so that batches stay large.
const CALLS_IN_FLIGHT: usize = 3;

type Reply<T> = oneshot::Sender<Result<T, IdempotencyError>>;
type Request<T> = (String, Reply<T>);
type BatchFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<Vec<T>, IdempotencyError>> + Send + 'a>>;

/// A store taking one id per call, batching behind the scenes.
#[derive(Clone)]
pub struct BatchedStore {
    claims: mpsc::UnboundedSender<Request<Claim>>,
    completions: mpsc::UnboundedSender<Request<()>>,
    releases: mpsc::UnboundedSender<Request<()>>,
}

impl BatchedStore {
    /// Starts the batching tasks; they end when every clone of the `BatchedStore` is dropped.
    pub fn new(store: Arc<dyn IdempotencyStore>, metrics: Arc<ConsumerMetrics>) -> Self {
        Self {
            claims: spawn(store.clone(), metrics.clone(), "claim", |store, ids| {
                Box::pin(async move { store.claim(ids).await })
            }),
            completions: spawn(store.clone(), metrics.clone(), "complete", |store, ids| {
                Box::pin(async move {
                    store.complete(ids).await?;
                    Ok(vec![(); ids.len()])
                })
            }),
            releases: spawn(store, metrics, "release", |store, ids| {
                Box::pin(async move {
                    store.release(ids).await?;
                    Ok(vec![(); ids.len()])
                })
            }),
        }
    }

    pub async fn claim(&self, id: &str) -> Result<Claim, IdempotencyError> {
        call(&self.claims, id).await
    }

    pub async fn complete(&self, id: &str) -> Result<(), IdempotencyError> {
        call(&self.completions, id).await
    }

    pub async fn release(&self, id: &str) -> Result<(), IdempotencyError> {
        call(&self.releases, id).await
    }
}

async fn call<T>(
    queue: &mpsc::UnboundedSender<Request<T>>,
    id: &str,
) -> Result<T, IdempotencyError> {
    let (reply, answer) = oneshot::channel();
    queue
        .send((id.to_owned(), reply))
        .map_err(|_| IdempotencyError::Closed("the batching task has stopped".into()))?;
    answer
        .await
        .map_err(|_| IdempotencyError::Closed("the batching task has stopped".into()))?
}

fn spawn<T, F>(
    store: Arc<dyn IdempotencyStore>,
    metrics: Arc<ConsumerMetrics>,
    name: &'static str,
    operation: F,
) -> mpsc::UnboundedSender<Request<T>>
where
    T: Send + 'static,
    F: for<'a> Fn(&'a dyn IdempotencyStore, &'a [String]) -> BatchFuture<'a, T>
        + Send
        + Sync
        + 'static,
{
    let (sender, mut receiver) = mpsc::unbounded_channel::<Request<T>>();
    let operation = Arc::new(operation);
    tokio::spawn(async move {
        let calls = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            // Room for a call first, so that while every call is out the next batch collects.
            let Ok(permit) = calls.clone().acquire_owned().await else {
                return;
            };
            if receiver.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
            let (ids, replies): (Vec<String>, Vec<Reply<T>>) = batch.drain(..).unzip();
            let (store, metrics, operation) = (store.clone(), metrics.clone(), operation.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let result = operation(store.as_ref(), &ids).await;
                metrics.observe_store(name, ids.len(), started.elapsed());
                answer(result, replies);
                drop(permit);
            });
        }
    });
    sender
}

fn answer<T>(result: Result<Vec<T>, IdempotencyError>, replies: Vec<Reply<T>>) {
    match result {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Err(error) => {
            let (category, message) = (error.category(), error.to_string());
            for reply in replies {
                let _ = reply.send(Err(IdempotencyError::Batched {
                    category,
                    message: message.clone(),
                }));
            }
        }
    }
}
