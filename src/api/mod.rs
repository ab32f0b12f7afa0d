//! The `ferry.dev/v1alpha1` API: one file per kind, plus the types they share.

pub mod admission;
pub mod broker_topic;
pub mod common;
pub mod consumer;
pub mod dead_letter_queue;
pub mod duration;
pub mod outbox_source;
pub mod retry_policy;
pub mod status;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use broker_topic::{BrokerKind, BrokerTopic, BrokerTopicSpec};
pub use common::{Connection, DatabaseEngine, DatabaseTable, ObjectRef, Ordering, SecretKeyRef};
pub use consumer::{Consumer, ConsumerSpec};
pub use dead_letter_queue::{DeadLetterQueue, DeadLetterQueueSpec};
pub use duration::Duration;
pub use outbox_source::{OutboxSource, OutboxSourceSpec};
pub use retry_policy::{RetryPolicy, RetryPolicySpec};

pub const GROUP: &str = "ferry.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "ferry.dev/v1alpha1";

/// The kinds of the API, in the order their CRDs are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    OutboxSource,
    BrokerTopic,
    RetryPolicy,
    DeadLetterQueue,
    Consumer,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::OutboxSource,
        Kind::BrokerTopic,
        Kind::RetryPolicy,
        Kind::DeadLetterQueue,
        Kind::Consumer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OutboxSource => "OutboxSource",
            Kind::BrokerTopic => "BrokerTopic",
            Kind::RetryPolicy => "RetryPolicy",
            Kind::DeadLetterQueue => "DeadLetterQueue",
            Kind::Consumer => "Consumer",
        }
    }

    pub fn from_kind_name(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// The generated CustomResourceDefinition of this kind.
    pub fn crd(self) -> CustomResourceDefinition {
        match self {
            Kind::OutboxSource => OutboxSource::crd(),
            Kind::BrokerTopic => BrokerTopic::crd(),
            Kind::RetryPolicy => RetryPolicy::crd(),
            Kind::DeadLetterQueue => DeadLetterQueue::crd(),
            Kind::Consumer => Consumer::crd(),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
