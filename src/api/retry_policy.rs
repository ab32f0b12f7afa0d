//! `RetryPolicy`: how failed deliveries are retried, and which failures are worth retrying.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{duration::Duration, status::CommonStatus};

/// An HTTP status (`503`) or a class of statuses (`5xx`).
pub const HTTP_STATUS_PATTERN: &str = r"^[1-5]([0-9]{2}|xx)$";

/// How a failed delivery is retried: exponential backoff with a cap and jitter, a bounded
/// number of attempts, a timeout per attempt, and which failures are retryable at all.
// Each `printcolumn(...)` repeats `name`/`type_` keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "RetryPolicy",
    plural = "retrypolicies",
    shortname = "rp",
    category = "ferry",
    namespaced,
    status = "RetryPolicyStatus",
    derive = "PartialEq",
    doc = "How failed deliveries are retried: exponential backoff with cap and jitter, max attempts, per-attempt timeout, retryable failures.",
    printcolumn(name = "Attempts", type_ = "integer", json_path = ".spec.maxAttempts"),
    printcolumn(name = "Initial", type_ = "string", json_path = ".spec.initialBackoff"),
    printcolumn(name = "Max", type_ = "string", json_path = ".spec.maxBackoff"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("duration(self.initialBackoff) <= duration(self.maxBackoff)").message("initialBackoff must not exceed maxBackoff").field_path(".initialBackoff"))]
#[x_kube(validation = Rule::new("duration(self.initialBackoff) > duration('0s')").message("initialBackoff must be greater than zero").field_path(".initialBackoff"))]
#[x_kube(validation = Rule::new("duration(self.attemptTimeout) > duration('0s')").message("attemptTimeout must be greater than zero").field_path(".attemptTimeout"))]
pub struct RetryPolicySpec {
    /// Attempts in all, the first delivery included. After the last one fails the message goes
    /// to the dead-letter queue.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_attempts: i32,
    /// Wait before the second attempt.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: Duration,
    /// Each wait is the previous one times this factor, up to `maxBackoff`.
    #[serde(default = "default_multiplier")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub multiplier: f64,
    /// The longest wait between two attempts (and the most a `Retry-After` is honoured for).
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
    /// How the wait is randomised so that many failing messages do not retry in lockstep.
    #[serde(default = "default_jitter")]
    pub jitter: Jitter,
    /// How long one attempt may take before it counts as a (retryable) timeout.
    #[serde(default = "default_attempt_timeout")]
    pub attempt_timeout: Duration,
    /// Which failures are retried; any other failure goes straight to the dead-letter queue.
    #[serde(default)]
    pub retry_on: RetryOn,
    /// Wait as long as a 429 or 503 response's `Retry-After` asks, up to `maxBackoff`.
    #[serde(default = "default_true")]
    pub honor_retry_after: bool,
}

fn default_max_attempts() -> i32 {
    5
}

fn default_initial_backoff() -> Duration {
    Duration::from_secs(1)
}

fn default_multiplier() -> f64 {
    2.0
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}

fn default_jitter() -> Jitter {
    Jitter::Full
}

fn default_attempt_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_true() -> bool {
    true
}

impl Default for RetryPolicySpec {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            multiplier: default_multiplier(),
            max_backoff: default_max_backoff(),
            jitter: default_jitter(),
            attempt_timeout: default_attempt_timeout(),
            retry_on: RetryOn::default(),
            honor_retry_after: true,
        }
    }
}

/// Jitter modes, as described in "Exponential Backoff And Jitter" (AWS Architecture Blog).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the computed backoff.
    None,
    /// A uniform random wait between zero and the computed backoff.
    Full,
    /// Half the computed backoff plus a uniform random share of the other half.
    Equal,
    /// A random wait between `initialBackoff` and three times the previous wait, capped.
    Decorrelated,
}

/// Which failures are retryable.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryOn {
    /// HTTP statuses to retry: exact codes (`503`) or classes (`5xx`). Any other non-2xx status
    /// is permanent. The default retries 408, 429 and every 5xx: other 4xx responses say the
    /// request itself is wrong, so repeating it cannot help.
    #[serde(default = "default_retryable_statuses")]
    #[schemars(length(max = 100), inner(regex(pattern = HTTP_STATUS_PATTERN)))]
    #[x_kube(validation = Rule::new("!self.exists(s, s.startsWith('2'))").message("2xx statuses are successes and cannot be retried"))]
    pub http_statuses: Vec<String>,
    /// Retry when an attempt times out.
    #[serde(default = "default_true")]
    pub timeouts: bool,
    /// Retry when the connection is refused, reset or cannot be made.
    #[serde(default = "default_true")]
    pub connection_errors: bool,
}

fn default_retryable_statuses() -> Vec<String> {
    ["408", "429", "5xx"].map(String::from).to_vec()
}

impl Default for RetryOn {
    fn default() -> Self {
        Self {
            http_statuses: default_retryable_statuses(),
            timeouts: true,
            connection_errors: true,
        }
    }
}

/// Whether the policy is valid.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicyStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
}
