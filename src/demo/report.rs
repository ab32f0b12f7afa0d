//! The demo's closing report: what happened, counted from the databases themselves, and the
//! invariants of the pattern checked against those counts.

use std::fmt::Write as _;

use super::{
    quickstart,
    store::{DUPLICATES, DemoDb, INBOX, MOVEMENTS, ORDERS, STOCK},
};

/// The counts, each from a query (except the two the workloads report).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub orders: i64,
    pub poison_orders: i64,
    /// Outbox rows not yet published (the relay deletes a row once the broker confirmed it).
    pub outbox_pending: i64,
    /// Orders whose event id is in the inventory service's inbox: delivered and applied.
    pub delivered: i64,
    /// Repeats the inventory service's inbox turned away.
    pub repeats_at_service: i64,
    /// Dead letters (of the relay or the consumer) that are poison orders, and that are not.
    pub dead_poison: i64,
    pub dead_other: i64,
    /// Orders neither delivered nor dead-lettered.
    pub lost: i64,
    /// Message ids with more than one stock movement.
    pub applied_twice: i64,
    /// SKUs whose stock level does not match their movements.
    pub stock_mismatches: i64,
}

/// What the workloads themselves reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reported {
    pub published: u64,
    pub retried: u64,
    pub deduplicated_by_consumer: u64,
    pub requests_at_service: u64,
}

impl Counts {
    /// Counts the rows of this run's orders.
    pub async fn gather(db: &DemoDb) -> Result<Self, sqlx::Error> {
        let dead_letters = quickstart::DEAD_LETTER_TABLE;
        let delivered = format!("EXISTS (SELECT 1 FROM {INBOX} i WHERE i.message_id = o.event_id)");
        let dead =
            format!("EXISTS (SELECT 1 FROM {dead_letters} d WHERE d.message_id = o.event_id)");
        Ok(Self {
            orders: db.count(&format!("SELECT COUNT(*) FROM {ORDERS}")).await?,
            poison_orders: db
                .count(&format!("SELECT COUNT(*) FROM {ORDERS} WHERE poison = 1"))
                .await?,
            outbox_pending: db
                .count(&format!(
                    "SELECT COUNT(*) FROM {}",
                    quickstart::OUTBOX_TABLE
                ))
                .await?,
            delivered: db
                .count(&format!(
                    "SELECT COUNT(*) FROM {ORDERS} o WHERE {delivered}"
                ))
                .await?,
            repeats_at_service: db
                .count(&format!("SELECT COUNT(*) FROM {DUPLICATES}"))
                .await?,
            dead_poison: db
                .count(&format!(
                    "SELECT COUNT(*) FROM {ORDERS} o WHERE poison = 1 AND {dead}"
                ))
                .await?,
            dead_other: db
                .count(&format!(
                    "SELECT COUNT(*) FROM {ORDERS} o WHERE poison = 0 AND {dead}"
                ))
                .await?,
            lost: db
                .count(&format!(
                    "SELECT COUNT(*) FROM {ORDERS} o WHERE NOT {delivered} AND NOT {dead}"
                ))
                .await?,
            applied_twice: db
                .count(&format!(
                    "SELECT COUNT(*) FROM (SELECT message_id FROM {MOVEMENTS} \
                     GROUP BY message_id HAVING COUNT(*) > 1) twice"
                ))
                .await?,
            stock_mismatches: db
                .count(&format!(
                    "SELECT COUNT(*) FROM {STOCK} s WHERE s.initial - s.on_hand <> \
                     (SELECT COALESCE(SUM(m.quantity), 0) FROM {MOVEMENTS} m WHERE m.sku = s.sku)"
                ))
                .await?,
        })
    }

    /// Every invariant that does not hold, in words; empty when the run kept every promise.
    pub fn broken_invariants(&self) -> Vec<String> {
        let mut broken = Vec::new();
        if self.lost != 0 {
            broken.push(format!(
                "{} orders were neither delivered nor dead-lettered",
                self.lost
            ));
        }
        if self.applied_twice != 0 {
            broken.push(format!(
                "{} messages reserved stock more than once",
                self.applied_twice
            ));
        }
        if self.dead_poison != self.poison_orders || self.dead_other != 0 {
            broken.push(format!(
                "the dead letters are {} poison and {} other orders; expected exactly the {} poison ones",
                self.dead_poison, self.dead_other, self.poison_orders
            ));
        }
        if self.outbox_pending != 0 {
            broken.push(format!(
                "{} outbox rows were never published",
                self.outbox_pending
            ));
        }
        if self.stock_mismatches != 0 {
            broken.push(format!(
                "{} SKUs' stock does not match their movements",
                self.stock_mismatches
            ));
        }
        broken
    }
}

/// The report as printed.
pub fn render(counts: &Counts, reported: &Reported) -> String {
    let mut out = String::new();
    let check = |ok: bool| if ok { "ok" } else { "FAILED" };
    let mut line = |label: &str, value: String, note: &str| {
        let _ = writeln!(out, "  {label:<28}{value:>8}   {note}");
    };
    line(
        "orders committed",
        counts.orders.to_string(),
        "order row + outbox event, one local transaction each",
    );
    line(
        "events published",
        reported.published.to_string(),
        &format!(
            "relay, after the broker's confirmation; {} left in the outbox",
            counts.outbox_pending
        ),
    );
    line(
        "events delivered",
        counts.delivered.to_string(),
        &format!(
            "applied by the inventory service ({} requests in all)",
            reported.requests_at_service
        ),
    );
    line(
        "duplicates suppressed",
        (counts.repeats_at_service + reported.deduplicated_by_consumer as i64).to_string(),
        &format!(
            "{} by the service's inbox (answers lost after commit), {} by the consumer's store",
            counts.repeats_at_service, reported.deduplicated_by_consumer
        ),
    );
    line(
        "retries",
        reported.retried.to_string(),
        "with exponential backoff, per the inventory-retries policy",
    );
    line(
        "dead letters",
        (counts.dead_poison + counts.dead_other).to_string(),
        &format!(
            "{}: expected exactly the {} poison orders",
            check(counts.dead_poison == counts.poison_orders && counts.dead_other == 0),
            counts.poison_orders
        ),
    );
    line(
        "lost",
        counts.lost.to_string(),
        &format!("{}: must be 0", check(counts.lost == 0)),
    );
    line(
        "effects applied twice",
        counts.applied_twice.to_string(),
        &format!(
            "{}: must be 0 (stock matches its movements: {})",
            check(counts.applied_twice == 0),
            if counts.stock_mismatches == 0 {
                "yes"
            } else {
                "NO"
            }
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> Counts {
        Counts {
            orders: 100,
            poison_orders: 3,
            delivered: 97,
            dead_poison: 3,
            ..Counts::default()
        }
    }

    #[test]
    fn a_clean_run_breaks_nothing() {
        assert!(clean().broken_invariants().is_empty());
        let text = render(&clean(), &Reported::default());
        assert!(!text.contains("FAILED"), "{text}");
    }

    #[test]
    fn each_broken_promise_is_named() {
        let cases = [
            Counts { lost: 1, ..clean() },
            Counts {
                applied_twice: 1,
                ..clean()
            },
            Counts {
                dead_other: 1,
                ..clean()
            },
            Counts {
                dead_poison: 2,
                ..clean()
            },
            Counts {
                outbox_pending: 5,
                ..clean()
            },
            Counts {
                stock_mismatches: 1,
                ..clean()
            },
        ];
        for counts in cases {
            assert_eq!(counts.broken_invariants().len(), 1, "{counts:?}");
        }
        assert!(render(&Counts { lost: 2, ..clean() }, &Reported::default()).contains("FAILED"));
    }
}
