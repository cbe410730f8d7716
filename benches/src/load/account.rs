//! Exact message accounting: which sequence numbers of a publisher a subscriber has
//! seen, and from that loss, duplicates and reordering.

/// What one subscriber has received from one publisher: a dense bitmap over the
/// sequence numbers (publishers number their messages 0, 1, 2, ...).
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    seen: Vec<u64>,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Receipts of a sequence number already received.
    pub duplicates: u64,
    /// First receipts of a sequence number lower than one received before it.
    pub reordered: u64,
    /// One past the highest sequence number received (0 before the first).
    pub high_water: u64,
}

/// What [`SeqTracker::record`] made of a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// First receipt, in order.
    InOrder,
    /// First receipt, after a later sequence number.
    Reordered,
    /// Seen before.
    Duplicate,
}

impl SeqTracker {
    /// Records a receipt of `seq`.
    pub fn record(&mut self, seq: u64) -> Receipt {
        let word = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if word >= self.seen.len() {
            self.seen.resize((word + 1).next_power_of_two(), 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return Receipt::Duplicate;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        if seq < self.high_water {
            self.reordered += 1;
            Receipt::Reordered
        } else {
            self.high_water = seq + 1;
            Receipt::InOrder
        }
    }

    /// Of the first `sent` sequence numbers, how many never arrived.
    pub fn lost(&self, sent: u64) -> u64 {
        let full = (sent / 64) as usize;
        let mut got: u64 = self
            .seen
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        if !sent.is_multiple_of(64) {
            if let Some(w) = self.seen.get(full) {
                got += u64::from((w & ((1u64 << (sent % 64)) - 1)).count_ones());
            }
        }
        sent - got
    }
}

/// Totals over every (subscriber, publisher) pair that should have met.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Integrity {
    /// Deliveries the subscriptions called for.
    pub expected: u64,
    /// Distinct deliveries received.
    pub unique: u64,
    /// Expected deliveries never received.
    pub lost: u64,
    /// Of `lost`, those after the last one received (a stall or a cut-off tail
    /// rather than a gap).
    pub lost_tail: u64,
    /// Deliveries received more than once (extra copies).
    pub duplicates: u64,
    /// Deliveries received after a later one of the same publisher.
    pub reordered: u64,
}

impl Integrity {
    /// Adds what `tracker` saw of a publisher that sent `sent` messages.
    pub fn add(&mut self, tracker: &SeqTracker, sent: u64) {
        self.expected += sent;
        self.unique += tracker.unique;
        self.lost += tracker.lost(sent);
        self.lost_tail += sent.saturating_sub(tracker.high_water);
        self.duplicates += tracker.duplicates;
        self.reordered += tracker.reordered;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_loss_dup_or_reorder() {
        let mut t = SeqTracker::default();
        for s in 0..1000 {
            assert_eq!(t.record(s), Receipt::InOrder);
        }
        assert_eq!((t.unique, t.duplicates, t.reordered), (1000, 0, 0));
        assert_eq!(t.lost(1000), 0);
        assert_eq!(t.high_water, 1000);
    }

    #[test]
    fn gaps_are_loss_until_filled_and_late_fills_are_reorders() {
        let mut t = SeqTracker::default();
        for s in (0..200).filter(|s| s % 10 != 3) {
            t.record(s);
        }
        assert_eq!(t.lost(200), 20);
        assert_eq!(t.lost(100), 10);
        assert_eq!(t.lost(3), 0);
        assert_eq!(t.lost(4), 1);
        assert_eq!(t.record(13), Receipt::Reordered);
        assert_eq!(t.lost(200), 19);
        assert_eq!(t.reordered, 1);
        // messages past what the publisher says it sent do not hide loss below it
        assert_eq!(t.lost(100), 9);
    }

    #[test]
    fn duplicates_are_counted_once_each_and_never_as_new() {
        let mut t = SeqTracker::default();
        t.record(5);
        assert_eq!(t.record(5), Receipt::Duplicate);
        assert_eq!(t.record(5), Receipt::Duplicate);
        assert_eq!(t.record(1), Receipt::Reordered);
        assert_eq!(t.record(1), Receipt::Duplicate);
        assert_eq!((t.unique, t.duplicates, t.reordered), (2, 3, 1));
        assert_eq!(t.lost(6), 4);
    }

    #[test]
    fn integrity_sums_pairs() {
        let mut a = SeqTracker::default();
        let mut b = SeqTracker::default();
        (0..64).for_each(|s| {
            a.record(s);
        });
        (0..64).rev().for_each(|s| {
            b.record(s);
        });
        b.record(0);
        let mut i = Integrity::default();
        i.add(&a, 65);
        i.add(&b, 64);
        assert_eq!(
            i,
            Integrity {
                expected: 129,
                unique: 128,
                lost: 1,
                lost_tail: 1,
                duplicates: 1,
                reordered: 63
            }
        );
    }
}
