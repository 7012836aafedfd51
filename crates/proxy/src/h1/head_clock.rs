//! How long a busy connection has waited for its next request head, told by one timer that
//! fires every [`IDLE_GRACE`] rather than by a deadline armed for each request.
//!
//! A deadline per request cost, on every request, a registration and a removal in the
//! runtime's timer wheel, two clock reads and, whenever the new deadline was the runtime's
//! earliest, a write to the runtime's wake-up eventfd (2,000 a second at 45,000 requests a
//! second through one gateway). The timer here is armed once per busy period and re-armed
//! only when it fires; at each firing the connection's count of heads read tells whether it
//! has waited for one head the whole interval. That bounds both limits to within one
//! interval: a connection gives its buffers back after 1-2 intervals of idleness, and a head
//! is overdue between [`HEAD_TIMEOUT`] less one interval and [`HEAD_TIMEOUT`] after the
//! connection began to wait for it. The timer is not re-armed while a request is handled, so
//! a long exchange (a long poll, a download) is woken by it at most once.

use std::time::Duration;

use super::{HEAD_TIMEOUT, IDLE_GRACE};

/// [`HEAD_TIMEOUT`] in firings of the timer.
const HEAD_TICKS: u32 = (HEAD_TIMEOUT.as_millis() / IDLE_GRACE.as_millis()) as u32;

/// See the module documentation.
pub(super) struct HeadClock {
    /// The connection's count of heads read at the previous firing.
    heads_seen: u64,
    /// Firings left before the head waited for is overdue.
    ticks_left: u32,
}

/// What a firing of the timer means.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Tick {
    /// Keep waiting (and re-arm the timer).
    Waiting,
    /// Nothing has arrived for a whole interval: the connection is idle.
    Idle,
    /// The head waited for is overdue.
    Overdue,
}

impl HeadClock {
    /// A clock started as the timer is armed, with `heads` read so far and the head waited
    /// for due in `due_in` (less, for a connection that waited while parked).
    pub(super) fn new(heads: u64, due_in: Duration) -> HeadClock {
        let ticks = due_in.as_millis() / IDLE_GRACE.as_millis();
        HeadClock {
            heads_seen: heads,
            // At most HEAD_TICKS, so the cast keeps the value.
            ticks_left: ticks.min(u128::from(HEAD_TICKS)) as u32,
        }
    }

    /// The timer fired while the connection waits for a head, with `heads` read so far and
    /// `begun` when part of the next one is buffered.
    pub(super) fn fired(&mut self, heads: u64, begun: bool) -> Tick {
        if heads != self.heads_seen {
            // This wait began after the previous firing, so less than an interval ago.
            self.heads_seen = heads;
            self.ticks_left = HEAD_TICKS - 1;
            return Tick::Waiting;
        }
        self.ticks_left = self.ticks_left.saturating_sub(1);
        if self.ticks_left == 0 {
            Tick::Overdue
        } else if begun {
            Tick::Waiting
        } else {
            Tick::Idle
        }
    }

    /// Time left for the head waited for, carried over while the connection is parked.
    pub(super) fn remaining(&self) -> Duration {
        IDLE_GRACE * self.ticks_left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_after_a_whole_interval_without_a_head() {
        let mut clock = HeadClock::new(0, HEAD_TIMEOUT);
        // Its first head was read before the first firing: the wait for the second began
        // within that interval, so it is not yet idle.
        assert_eq!(clock.fired(1, false), Tick::Waiting);
        assert_eq!(clock.fired(1, false), Tick::Idle);
        assert_eq!(clock.remaining(), HEAD_TIMEOUT - 2 * IDLE_GRACE);
    }

    #[test]
    fn a_head_begun_and_never_finished_is_overdue_within_one_interval_of_the_timeout() {
        let mut clock = HeadClock::new(7, HEAD_TIMEOUT);
        let mut firings = 1;
        while clock.fired(7, true) == Tick::Waiting {
            firings += 1;
        }
        assert_eq!(clock.fired(7, true), Tick::Overdue);
        assert_eq!(IDLE_GRACE * firings, HEAD_TIMEOUT);
    }

    #[test]
    fn every_head_read_restarts_the_count() {
        let mut clock = HeadClock::new(0, HEAD_TIMEOUT);
        for heads in 1..1000 {
            assert_eq!(clock.fired(heads, true), Tick::Waiting);
        }
        assert_eq!(clock.remaining(), HEAD_TIMEOUT - IDLE_GRACE);
    }

    #[test]
    fn time_waited_while_parked_counts() {
        let mut clock = HeadClock::new(3, IDLE_GRACE * 2);
        assert_eq!(clock.fired(3, true), Tick::Waiting);
        assert_eq!(clock.fired(3, true), Tick::Overdue);
        // A deadline already past is overdue at the first firing.
        let mut late = HeadClock::new(3, Duration::ZERO);
        assert_eq!(late.fired(3, false), Tick::Overdue);
    }
}
