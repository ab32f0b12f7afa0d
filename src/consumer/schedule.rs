//! Which received messages may start now: all of them in any order, or, with per-key ordering,
//! one message per key at a time in arrival order, so that a slow or failing message holds back
//! only later messages with its own key.

use std::collections::{HashMap, VecDeque};

/// Received messages waiting for their turn. Generic over the message so the rules can be
/// tested without a broker.
#[derive(Debug)]
pub struct Schedule<M> {
    per_key: bool,
    /// Messages that may start, in arrival order.
    ready: VecDeque<(String, M)>,
    /// Per key with a message in progress: the later messages of that key, in arrival order.
    blocked: HashMap<String, VecDeque<M>>,
}

impl<M> Schedule<M> {
    pub fn new(per_key: bool) -> Self {
        Self {
            per_key,
            ready: VecDeque::new(),
            blocked: HashMap::new(),
        }
    }

    /// Adds a received message.
    pub fn push(&mut self, key: &str, message: M) {
        if !self.per_key {
            self.ready.push_back((String::new(), message));
            return;
        }
        match self.blocked.get_mut(key) {
            Some(later) => later.push_back(message),
            None => {
                // The key is in progress from now on (it starts next, or waits in `ready`).
                self.blocked.insert(key.to_owned(), VecDeque::new());
                self.ready.push_back((key.to_owned(), message));
            }
        }
    }

    /// The next message that may start, with its key.
    pub fn next(&mut self) -> Option<(String, M)> {
        self.ready.pop_front()
    }

    /// A message of `key` has been settled: the key's next message becomes ready.
    pub fn finished(&mut self, key: &str) {
        if !self.per_key {
            return;
        }
        let Some(later) = self.blocked.get_mut(key) else {
            return;
        };
        match later.pop_front() {
            Some(message) => self.ready.push_back((key.to_owned(), message)),
            None => {
                self.blocked.remove(key);
            }
        }
    }

    /// Messages not yet started and kept in memory, handed back when the consumer stops.
    pub fn drain(&mut self) -> Vec<M> {
        let mut all: Vec<M> = self.ready.drain(..).map(|(_, message)| message).collect();
        for (_, later) in self.blocked.drain() {
            all.extend(later);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_key_holds_later_messages_of_a_busy_key_only() {
        let mut schedule = Schedule::new(true);
        schedule.push("a", 1);
        schedule.push("a", 2);
        schedule.push("b", 3);
        assert_eq!(schedule.next(), Some(("a".into(), 1)));
        assert_eq!(schedule.next(), Some(("b".into(), 3)));
        assert_eq!(schedule.next(), None, "a's second waits for its first");
        schedule.finished("b");
        assert_eq!(schedule.next(), None);
        schedule.finished("a");
        assert_eq!(schedule.next(), Some(("a".into(), 2)));
        schedule.push("a", 4);
        schedule.finished("a");
        assert_eq!(schedule.next(), Some(("a".into(), 4)));
        schedule.finished("a");
        schedule.push("a", 5);
        assert_eq!(
            schedule.next(),
            Some(("a".into(), 5)),
            "an idle key starts at once"
        );
    }

    #[test]
    fn without_ordering_everything_is_ready_in_arrival_order() {
        let mut schedule = Schedule::new(false);
        for n in 0..4 {
            schedule.push("same", n);
        }
        let started: Vec<i32> = std::iter::from_fn(|| schedule.next().map(|(_, n)| n)).collect();
        assert_eq!(started, [0, 1, 2, 3]);
    }

    #[test]
    fn drain_returns_everything_not_started() {
        let mut schedule = Schedule::new(true);
        schedule.push("a", 1);
        schedule.push("a", 2);
        schedule.push("b", 3);
        let _ = schedule.next();
        let mut left = schedule.drain();
        left.sort();
        assert_eq!(left, [2, 3]);
        assert_eq!(schedule.next(), None);
    }
}
