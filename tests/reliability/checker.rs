//! The invariant checker: after a scenario, compares the source of truth (the business rows
//! committed with their outbox events) with the receiving service's record of effects and the
//! dead-letter table, all read from the scenario's own database, and prints the counts so that
//! a failure is readable.

use std::fmt;

use sqlx::PgPool;

use super::world::{DEAD_LETTERS, LEDGER, ORDERS};

/// What the data says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Business rows committed, each with its outbox event.
    pub committed: i64,
    /// Of those, the ones made to fail permanently (the service refuses them).
    pub poison: i64,
    /// Committed events with an effect at the service.
    pub delivered: i64,
    /// Poison events in the dead-letter table, and other events there.
    pub dead_poison: i64,
    pub dead_other: i64,
    /// Committed events neither delivered nor dead-lettered.
    pub lost: i64,
    /// Events whose effect was applied more than once.
    pub applied_twice: i64,
    /// Effects that came before an earlier-committed effect of the same key.
    pub order_violations: i64,
    /// Outbox rows not yet published.
    pub outbox_pending: i64,
}

impl Counts {
    /// Everything but `outbox_pending`, which the world counts where the outbox is.
    pub async fn read(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let count = |sql: String| async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await
        };
        let delivered =
            format!("EXISTS (SELECT 1 FROM {LEDGER} l WHERE l.message_id = o.event_id)");
        let dead =
            format!("EXISTS (SELECT 1 FROM {DEAD_LETTERS} d WHERE d.message_id = o.event_id)");
        Ok(Self {
            committed: count(format!("SELECT COUNT(*) FROM {ORDERS}")).await?,
            poison: count(format!("SELECT COUNT(*) FROM {ORDERS} WHERE poison")).await?,
            delivered: count(format!("SELECT COUNT(*) FROM {ORDERS} o WHERE {delivered}")).await?,
            dead_poison: count(format!("SELECT COUNT(*) FROM {ORDERS} o WHERE poison AND {dead}"))
                .await?,
            dead_other: count(format!(
                "SELECT COUNT(*) FROM {ORDERS} o WHERE NOT poison AND {dead}"
            ))
            .await?,
            lost: count(format!(
                "SELECT COUNT(*) FROM {ORDERS} o WHERE NOT {delivered} AND NOT {dead}"
            ))
            .await?,
            applied_twice: count(format!(
                "SELECT COUNT(*) FROM (SELECT message_id FROM {LEDGER} GROUP BY message_id \
                 HAVING COUNT(*) > 1) twice"
            ))
            .await?,
            order_violations: count(format!(
                "SELECT COUNT(*) FROM (SELECT n, lag(n) OVER (PARTITION BY key ORDER BY seq) AS prev \
                 FROM {LEDGER}) effects WHERE prev IS NOT NULL AND n < prev"
            ))
            .await?,
            outbox_pending: 0,
        })
    }

    /// Every event has settled: delivered, or dead-lettered.
    pub fn settled(&self) -> bool {
        self.committed > 0 && self.delivered + self.dead_poison + self.dead_other >= self.committed
    }

    /// The promises that do not hold, in words; `ordered` when per-key order was asked for.
    pub fn broken(&self, ordered: bool) -> Vec<String> {
        let mut broken = Vec::new();
        if self.lost != 0 {
            broken.push(format!("lost {} (must be 0)", self.lost));
        }
        if self.applied_twice != 0 {
            broken.push(format!("applied twice {} (must be 0)", self.applied_twice));
        }
        if self.dead_poison != self.poison || self.dead_other != 0 {
            broken.push(format!(
                "dead letters {} poison + {} other (must be exactly the {} poison)",
                self.dead_poison, self.dead_other, self.poison
            ));
        }
        if ordered && self.order_violations != 0 {
            broken.push(format!(
                "{} effects out of per-key order (must be 0)",
                self.order_violations
            ));
        }
        broken
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "committed {} (poison {}), delivered {}, dead-lettered {} poison + {} other, lost {}, \
             applied twice {}, out of order {}, outbox pending {}",
            self.committed,
            self.poison,
            self.delivered,
            self.dead_poison,
            self.dead_other,
            self.lost,
            self.applied_twice,
            self.order_violations,
            self.outbox_pending
        )
    }
}
