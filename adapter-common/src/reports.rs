//! What the broker decided on its own, in the log: sessions it ended and messages
//! it dropped, rate-limited so that a flood of drops cannot flood the log.
//!
//! Each session the core ends on its own (`Event::SessionEnded`) is a warning
//! line with the client id, the reason and what was lost, at most
//! [`SESSION_LINES_PER_TICK`] per tick; the rest are counted and summed up at the
//! tick. Drops are counted by the core ([`broker_state::Stats`]); every tick the
//! counters that moved are logged once, as one line with the deltas.

use broker_state::{SessionEnd, Stats};

/// Session-end lines logged per tick before the rest are only counted.
pub const SESSION_LINES_PER_TICK: u32 = 20;

/// The log's view of the core's decisions since the previous tick.
pub struct Reports {
    last: Stats,
    lines_left: u32,
    suppressed: u64,
    /// Store failures since the last tick beyond the first, which is logged.
    store_failures: u64,
}

impl Default for Reports {
    fn default() -> Self {
        Reports {
            last: Stats::default(),
            lines_left: SESSION_LINES_PER_TICK,
            suppressed: 0,
            store_failures: 0,
        }
    }
}

impl Reports {
    /// A session ended by the broker: logged, or counted when this tick's lines are
    /// used up.
    pub fn session_ended(
        &mut self,
        client_id: &str,
        reason: SessionEnd,
        queued_messages: usize,
        queued_bytes: usize,
    ) {
        if self.lines_left == 0 {
            self.suppressed += 1;
            return;
        }
        self.lines_left -= 1;
        match reason {
            SessionEnd::QueueOverflow => tracing::warn!(
                client_id,
                reason = %reason,
                queued_messages,
                queued_bytes,
                "session ended by the broker"
            ),
            SessionEnd::Expired => tracing::info!(
                client_id,
                reason = %reason,
                queued_messages,
                queued_bytes,
                "session ended by the broker"
            ),
        }
    }

    /// The store could not make a batch durable (what waited for it is refused):
    /// the first failure of a tick is logged with its message, the rest counted.
    pub fn store_failed(&mut self, error: &str) {
        if self.store_failures == 0 {
            tracing::error!(%error, "store write failed: what it held was not acknowledged");
        }
        self.store_failures += 1;
    }

    /// The tick: logs the drop counters that moved since the previous one, and how
    /// many session-end lines were left out.
    pub fn tick(&mut self, stats: &Stats) {
        if self.store_failures > 1 {
            tracing::error!(
                failures = self.store_failures - 1,
                "more store writes failed since the last report"
            );
        }
        self.store_failures = 0;
        if self.suppressed > 0 {
            tracing::warn!(
                sessions = self.suppressed,
                "more sessions ended by the broker (lines left out of the log)"
            );
        }
        self.suppressed = 0;
        self.lines_left = SESSION_LINES_PER_TICK;
        let d = |now: u64, before: u64| now.saturating_sub(before);
        let last = &self.last;
        let slow = d(
            stats.dropped_qos0_slow_consumer,
            last.dropped_qos0_slow_consumer,
        );
        let online = d(
            stats.dropped_online_queue_full,
            last.dropped_online_queue_full,
        );
        let offline = d(
            stats.dropped_offline_queue_full,
            last.dropped_offline_queue_full,
        );
        let too_large = d(stats.dropped_too_large, last.dropped_too_large);
        let expired = d(stats.expired, last.expired);
        let subs = d(stats.subscriptions_refused, last.subscriptions_refused);
        let retained = d(stats.retained_refused, last.retained_refused);
        if slow + online + offline + too_large + expired + subs + retained > 0 {
            tracing::warn!(
                qos0_slow_consumer = slow,
                online_queue_full = online,
                offline_queue_full = offline,
                too_large_for_receiver = too_large,
                expired,
                subscriptions_refused = subs,
                retained_refused = retained,
                "messages dropped or refused by the broker since the last report"
            );
        }
        self.last = *stats;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_end_lines_are_limited_per_tick_and_the_rest_counted() {
        let mut r = Reports::default();
        for i in 0..SESSION_LINES_PER_TICK + 5 {
            r.session_ended(&format!("c{i}"), SessionEnd::QueueOverflow, 3, 30);
        }
        assert_eq!((r.lines_left, r.suppressed), (0, 5));
        // The tick sums up what was left out and starts a new allowance.
        r.tick(&Stats::default());
        assert_eq!((r.lines_left, r.suppressed), (SESSION_LINES_PER_TICK, 0));
        r.session_ended("next", SessionEnd::Expired, 0, 0);
        assert_eq!(
            (r.lines_left, r.suppressed),
            (SESSION_LINES_PER_TICK - 1, 0)
        );
    }
}
