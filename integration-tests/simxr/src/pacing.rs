//! Frame pacing: vsyncs on a fixed timeline from the session's begin, and which one each
//! `xrWaitFrame` hands out. Pure arithmetic on CLOCK_MONOTONIC nanoseconds.

/// The current CLOCK_MONOTONIC time in nanoseconds: the clock `XrTime` counts.
pub(crate) fn now_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns`.
pub(crate) fn sleep_until(deadline_ns: i64) {
    loop {
        let left = deadline_ns - now_ns();
        if left <= 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_nanos(left as u64));
    }
}

/// The display period for `rate_hz` (90 Hz when the rate is not a positive number).
pub(crate) fn period_ns(rate_hz: f64) -> i64 {
    let rate = if rate_hz.is_finite() && rate_hz > 0.0 {
        rate_hz
    } else {
        90.0
    };
    (1e9 / rate).round() as i64
}

/// What one `xrWaitFrame` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wait {
    /// The vsync to sleep until.
    pub(crate) vsync_ns: i64,
    /// The frame's predicted display time: that vsync plus one period.
    pub(crate) display_ns: i64,
    /// Vsyncs that passed since the last one handed out without being handed out.
    pub(crate) missed: u64,
}

/// Hands out vsyncs `origin + k·period`, each at most once, in order.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    origin_ns: i64,
    period_ns: i64,
    last: Option<i64>,
}

impl Pacer {
    pub(crate) fn new(origin_ns: i64, period_ns: i64) -> Self {
        Self {
            origin_ns,
            period_ns: period_ns.max(1),
            last: None,
        }
    }

    pub(crate) fn period_ns(&self) -> i64 {
        self.period_ns
    }

    /// The vsync for a wait at `now_ns`: the one after the last handed out, or, when the
    /// application came late and that one has passed, the next one still ahead.
    pub(crate) fn next(&mut self, now_ns: i64) -> Wait {
        // Index of the first vsync strictly after `now`.
        let ahead = (now_ns - self.origin_ns).div_euclid(self.period_ns) + 1;
        let (k, missed) = match self.last {
            None => (ahead, 0),
            Some(last) if self.vsync(last + 1) >= now_ns => (last + 1, 0),
            Some(last) => (ahead, (ahead - last - 1) as u64),
        };
        self.last = Some(k);
        let vsync_ns = self.vsync(k);
        Wait {
            vsync_ns,
            display_ns: vsync_ns + self.period_ns,
            missed,
        }
    }

    fn vsync(&self, k: i64) -> i64 {
        self.origin_ns + k * self.period_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ninety_hertz_is_eleven_point_one_milliseconds() {
        assert_eq!(period_ns(90.0), 11_111_111);
        assert_eq!(period_ns(0.0), 11_111_111);
    }

    #[test]
    fn a_prompt_application_gets_consecutive_vsyncs() {
        let mut p = Pacer::new(1000, 100);
        assert_eq!(
            p.next(1000),
            Wait {
                vsync_ns: 1100,
                display_ns: 1200,
                missed: 0
            }
        );
        // Waking exactly at the vsync it slept to, it gets the next one.
        assert_eq!(
            p.next(1100),
            Wait {
                vsync_ns: 1200,
                display_ns: 1300,
                missed: 0
            }
        );
        assert_eq!(
            p.next(1150),
            Wait {
                vsync_ns: 1300,
                display_ns: 1400,
                missed: 0
            }
        );
    }

    #[test]
    fn a_late_application_skips_the_passed_vsyncs_and_counts_them() {
        let mut p = Pacer::new(0, 100);
        assert_eq!(p.next(0).vsync_ns, 100);
        // Next due is 200; at 450 vsyncs 200, 300 and 400 have passed.
        assert_eq!(
            p.next(450),
            Wait {
                vsync_ns: 500,
                display_ns: 600,
                missed: 3
            }
        );
        assert_eq!(p.next(500).missed, 0);
    }

    #[test]
    fn an_early_application_waits_for_the_vsync_after_the_last() {
        let mut p = Pacer::new(0, 100);
        p.next(0);
        p.next(10);
        assert_eq!(p.next(20).vsync_ns, 300);
    }
}
