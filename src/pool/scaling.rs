//! When a pool grows or shrinks (contract §10): at most one step per
//! cooldown, one worker more while the backlog is above the up threshold,
//! one fewer while it is below the down threshold, within `[min, max]`; a
//! manual `scale` sets the count and holds it before auto-scaling resumes.
//! Pure: the caller passes the time and the backlog.

use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode};

/// The thresholds and bounds.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) min: u32,
    pub(crate) max: u32,
    pub(crate) up: u64,
    pub(crate) down: u64,
    pub(crate) cooldown: Duration,
    pub(crate) auto: bool,
    /// How long a manual `scale` holds.
    pub(crate) hold: Duration,
}

/// The desired worker count and when it last changed.
#[derive(Debug)]
pub(crate) struct Scaler {
    policy: Policy,
    desired: u32,
    last_step: Option<Instant>,
    manual_until: Option<Instant>,
}

impl Scaler {
    pub(crate) fn new(policy: Policy) -> Scaler {
        Scaler {
            desired: policy.min,
            policy,
            last_step: None,
            manual_until: None,
        }
    }

    pub(crate) fn desired(&self) -> u32 {
        self.desired
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Auto-scaling is on and no manual count holds now.
    pub(crate) fn auto_now(&self, now: Instant) -> bool {
        self.policy.auto && self.manual_until.is_none_or(|t| now >= t)
    }

    /// How long a manual count still holds.
    pub(crate) fn hold_left(&self, now: Instant) -> Duration {
        self.manual_until
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default()
    }

    /// A manual `scale` to `n`: `out_of_range` outside `[min, max]`.
    pub(crate) fn set(&mut self, n: u32, now: Instant) -> Result<u32, Error> {
        let p = &self.policy;
        if n < p.min || n > p.max {
            return Err(Error::invalid(
                ErrorCode::OutOfRange,
                format!("workers must be within [{}, {}], got {n}", p.min, p.max),
            ));
        }
        self.desired = n;
        self.manual_until = Some(now + p.hold);
        self.last_step = Some(now);
        Ok(n)
    }

    /// One auto-scaling decision for a backlog of `pending`; the new
    /// desired count when it changed.
    pub(crate) fn tick(&mut self, pending: u64, now: Instant) -> Option<u32> {
        if !self.auto_now(now) {
            return None;
        }
        if self
            .last_step
            .is_some_and(|t| now.duration_since(t) < self.policy.cooldown)
        {
            return None;
        }
        let p = &self.policy;
        let next = if pending > p.up && self.desired < p.max {
            self.desired + 1
        } else if pending < p.down && self.desired > p.min {
            self.desired - 1
        } else {
            return None;
        };
        self.desired = next;
        self.last_step = Some(now);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaler() -> Scaler {
        Scaler::new(Policy {
            min: 1,
            max: 3,
            up: 10,
            down: 2,
            cooldown: Duration::from_secs(5),
            auto: true,
            hold: Duration::from_secs(60),
        })
    }

    #[test]
    fn one_step_per_cooldown_within_bounds() {
        let mut s = scaler();
        let t0 = Instant::now();
        assert_eq!(s.desired(), 1);
        assert_eq!(s.tick(11, t0), Some(2));
        assert_eq!(s.tick(100, t0 + Duration::from_secs(4)), None, "cooldown");
        assert_eq!(s.tick(100, t0 + Duration::from_secs(5)), Some(3));
        assert_eq!(s.tick(100, t0 + Duration::from_secs(10)), None, "max");
        assert_eq!(
            s.tick(10, t0 + Duration::from_secs(20)),
            None,
            "10 is not > 10"
        );
        assert_eq!(s.tick(1, t0 + Duration::from_secs(25)), Some(2));
        assert_eq!(s.tick(0, t0 + Duration::from_secs(30)), Some(1));
        assert_eq!(s.tick(0, t0 + Duration::from_secs(35)), None, "min");
    }

    #[test]
    fn a_manual_count_holds_and_is_bounded() {
        let mut s = scaler();
        let t0 = Instant::now();
        assert_eq!(s.set(0, t0).unwrap_err().code(), "out_of_range");
        assert_eq!(s.set(4, t0).unwrap_err().code(), "out_of_range");
        assert_eq!(s.set(3, t0).unwrap(), 3);
        assert!(!s.auto_now(t0 + Duration::from_secs(59)));
        assert_eq!(s.tick(0, t0 + Duration::from_secs(59)), None, "held");
        assert_eq!(s.tick(0, t0 + Duration::from_secs(60)), Some(2));
    }
}
