//! Coalesces the idempotency calls of concurrent deliveries into batches: while one batch is at
//! the store, the next one collects, so a busy consumer pays one round trip for many messages
//! and an idle one pays no wait at all.

use std::{future::Future, pin::Pin, sync::Arc};

use tokio::sync::{mpsc, oneshot};

use super::{Claim, IdempotencyError, IdempotencyStore};

/// The most ids in one call to the store.
const MAX_BATCH: usize = 512;

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
    pub fn new(store: Arc<dyn IdempotencyStore>) -> Self {
        Self {
            claims: spawn(store.clone(), |store, ids| {
                Box::pin(async move { store.claim(ids).await })
            }),
            completions: spawn(store.clone(), |store, ids| {
                Box::pin(async move {
                    store.complete(ids).await?;
                    Ok(vec![(); ids.len()])
                })
            }),
            releases: spawn(store, |store, ids| {
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

fn spawn<T, F>(store: Arc<dyn IdempotencyStore>, operation: F) -> mpsc::UnboundedSender<Request<T>>
where
    T: Send + 'static,
    F: for<'a> Fn(&'a dyn IdempotencyStore, &'a [String]) -> BatchFuture<'a, T> + Send + 'static,
{
    let (sender, mut receiver) = mpsc::unbounded_channel::<Request<T>>();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let (ids, replies): (Vec<String>, Vec<Reply<T>>) = batch.drain(..).unzip();
            match operation(store.as_ref(), &ids).await {
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
    });
    sender
}
