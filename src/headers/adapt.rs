//! Adapting a key's limits to 429s when its provider says nothing else: no rate-limit headers,
//! only refusals. The real limit may be lower than configured (a lower tier, a limit shared
//! with another application, a provider that changed it); each 429 is the only evidence.
//!
//! The rule and why it converges are on [`AdaptPolicy`].

use super::budgets::{self, Held};
use super::Ceilings;
use crate::budget::Budget;
use crate::error::Error;
use crate::rate_limiter::RateLimiter;
use std::sync::Mutex;
use std::time::Duration;

/// Parts per million: the scale and the policy's fractions.
const ONE: u64 = 1_000_000;

/// How a key's limits follow 429s when its provider sends no rate-limit headers. Set per key
/// with [`KeyPool::set_adapt_policy`](crate::KeyPool::set_adapt_policy); on by default.
///
/// # The rule
///
/// A key runs at a *scale* of its configured limits (every budget alike, since a bare 429
/// does not say which budget ran out), starting at 1:
///
/// - **A 429** marks the scale as *refused* (the lowest refused level is kept) and lowers the
///   scale: back to the highest level that last held for a whole window, if it is lower;
///   otherwise by [`decrease`](AdaptPolicy::decrease), never below
///   [`floor`](AdaptPolicy::floor). A 429 for a request admitted before the change says
///   nothing new: until the claims queued at the old pace have been released (the limiter's
///   backlog when the 429 came), and for the cooldown the 429 earned (its `retry-after`,
///   clamped by the [`LearnPolicy`](super::LearnPolicy)), plus one second for the network,
///   further 429s change nothing.
/// - **Probing**: once a window (the key's shortest) has passed with no 429, the scale counts
///   as holding, and it closes half its gap to [`margin`](AdaptPolicy::margin) below the
///   refused level (to 1 if none); and so once a window after that. It never probes above
///   that level by itself, so once the level is found no further 429 comes.
/// - **Relaxing**: after [`hold`](AdaptPolicy::hold) windows with no 429 the refused level
///   rises by [`relax`](AdaptPolicy::relax) (to 1 at most), so a limit that was raised
///   again is found again, at the cost of one 429 per hold.
///
/// A key whose responses carry limit headers is not adapted: the limits they give take
/// precedence (they are applied as they come), and the key's scale goes back to 1.
///
/// # Why it converges
///
/// With the [provider-safe shape](crate::Burst::Provider) a key whose limit is at or below the
/// real one draws no 429, so a 429 at scale `x` means `x` is above the real scale `R` (or
/// within the shape's own margin of it). The probe target `(1 - margin)·x` then either lies
/// below `R`, and the key settles there, at least `1 - margin` of `R`; or it draws another
/// 429 and falls back to the level that held: the refused level falls geometrically until
/// the target is below `R`. A key configured at 3/2 of its real limit takes one or two
/// decreases (1 → 0.7 → 0.49) and a few windows of probing to settle near
/// `0.95 × 0.7 = 0.665`, 99.75% of the real limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AdaptPolicy {
    enabled: bool,
    decrease: u64,
    margin: u64,
    floor: u64,
    hold: u32,
    relax: u64,
}

fn ppm(fraction: f64) -> u64 {
    if fraction.is_nan() {
        return 0;
    }
    (fraction.clamp(0.0, 1.0) * ONE as f64).round() as u64
}

impl AdaptPolicy {
    /// Cut to 0.7 of the scale on a 429, probe to 5% below the refused level, never below 1/8
    /// of the configured limits, relax the refused level by a quarter after 60 windows without
    /// a 429 (an hour, for per-minute limits).
    pub const DEFAULT: AdaptPolicy = AdaptPolicy {
        enabled: true,
        decrease: 700_000,
        margin: 50_000,
        floor: 125_000,
        hold: 60,
        relax: 250_000,
    };

    /// The defaults, [`DEFAULT`](Self::DEFAULT).
    pub const fn new() -> Self {
        Self::DEFAULT
    }

    /// No adaptation: a 429 only cools the key down.
    pub const fn off() -> Self {
        AdaptPolicy {
            enabled: false,
            ..Self::DEFAULT
        }
    }

    /// Whether 429s change the key's limits.
    pub const fn enabled(&self) -> bool {
        self.enabled
    }

    /// The factor a 429 multiplies the scale by, in `[0.05, 0.95]` (default 0.7).
    pub fn decrease(mut self, factor: f64) -> Self {
        self.decrease = ppm(factor).clamp(50_000, 950_000);
        self
    }

    /// How far below the refused level probing stops, in `[0.01, 0.5]` (default 0.05).
    pub fn margin(mut self, fraction: f64) -> Self {
        self.margin = ppm(fraction).clamp(10_000, 500_000);
        self
    }

    /// The lowest scale 429s may cut to, in `[0.01, 1]` (default 1/8).
    pub fn floor(mut self, fraction: f64) -> Self {
        self.floor = ppm(fraction).clamp(10_000, ONE);
        self
    }

    /// Windows without a 429 before the refused level relaxes by [`relax`](Self::relax)
    /// (default 60; at least 1).
    pub fn hold(mut self, windows: u32) -> Self {
        self.hold = windows.max(1);
        self
    }

    /// How much the refused level rises after each [`hold`](Self::hold), in `[0.01, 1]`
    /// (default 0.25: by a quarter).
    pub fn relax(mut self, fraction: f64) -> Self {
        self.relax = ppm(fraction).clamp(10_000, ONE);
        self
    }
}

impl Default for AdaptPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What one response says, for adaptation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// It carried limit headers: they decide.
    Headers,
    /// A 429 without them, and the cooldown it earned.
    Refused(Duration),
    /// Any other response without them.
    Served,
}

/// One key's adaptation: its policy and where it stands.
#[derive(Debug, Default)]
pub(crate) struct Adapt {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    policy: AdaptPolicy,
    /// The key's scale of its configured limits, ppm.
    scale: u64,
    /// The lowest scale that drew a 429 (relaxed over time), ppm.
    refused: Option<u64>,
    /// The highest scale that held for a whole window since the last decrease, ppm.
    held: Option<u64>,
    /// Pool clock readings: until when 429s change nothing, the last probe, the last 429 or
    /// relax.
    guard_until: u64,
    probed_at: u64,
    quiet_since: u64,
    /// Limit headers were seen: adaptation stands aside.
    headers: bool,
}

impl Default for State {
    fn default() -> Self {
        State {
            policy: AdaptPolicy::DEFAULT,
            scale: ONE,
            refused: None,
            held: None,
            guard_until: 0,
            probed_at: 0,
            quiet_since: 0,
            headers: false,
        }
    }
}

impl State {
    /// Whether `signal` at `now` could change anything.
    fn acts(&self, signal: Signal, now: u64) -> bool {
        match signal {
            Signal::Headers => true,
            _ if self.headers || !self.policy.enabled => false,
            Signal::Refused(_) => now >= self.guard_until,
            Signal::Served => true,
        }
    }

    /// The scale after `signal` at pool reading `now` for a key whose shortest window is
    /// `window_ns` and whose backlog drains in `backlog_ns`; `None` when it stays.
    fn next(&mut self, signal: Signal, now: u64, window_ns: u64, backlog_ns: u64) -> Option<u64> {
        if !self.acts(signal, now) {
            return None;
        }
        let p = self.policy;
        let before = self.scale;
        match signal {
            Signal::Headers => {
                self.headers = true;
                self.refused = None;
                self.held = None;
                self.scale = ONE;
            }
            Signal::Refused(cooldown) => {
                self.refused = Some(self.refused.map_or(before, |r| r.min(before)));
                self.scale = match self.held {
                    Some(h) if h < before => h,
                    _ => {
                        self.held = None;
                        (before * p.decrease / ONE).max(p.floor)
                    }
                };
                let quiet = nanos(cooldown).max(backlog_ns);
                self.guard_until = now.saturating_add(quiet).saturating_add(1_000_000_000);
                self.probed_at = now;
                self.quiet_since = now;
            }
            Signal::Served => {
                if now.saturating_sub(self.probed_at.max(self.quiet_since)) < window_ns {
                    return None;
                }
                self.probed_at = now;
                self.held = Some(self.held.map_or(before, |h| h.max(before)));
                let hold = window_ns.saturating_mul(p.hold as u64);
                if let Some(r) = self.refused {
                    if now.saturating_sub(self.quiet_since) >= hold {
                        let up = r + r * p.relax / ONE;
                        self.refused = (up < ONE).then_some(up);
                        self.quiet_since = now;
                    }
                }
                let target = self.refused.map_or(ONE, |r| r - r * p.margin / ONE);
                if before < target {
                    let gap = target - before;
                    // Half the gap, or all of it once it is within half a percent.
                    let step = if gap <= ONE / 200 {
                        gap
                    } else {
                        gap.div_ceil(2)
                    };
                    self.scale = before + step;
                }
            }
        }
        (self.scale != before).then_some(self.scale)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Adapt {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic between two plain assignments.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn policy(&self) -> AdaptPolicy {
        self.state().policy
    }

    pub(crate) fn set_policy(&self, policy: AdaptPolicy) {
        self.state().policy = policy;
    }

    /// The key's scale now, in `[0, 1]`.
    pub(crate) fn scale(&self) -> f64 {
        self.state().scale as f64 / ONE as f64
    }

    /// Takes `signal` at pool reading `now` and brings `limiter` to the resulting scale of
    /// `configured`, within `ceilings`: the changes made, `(budget, limit)`. No call to the
    /// limiter unless its limits change.
    /// `held` is the limiter's budgets as learning just read (and left) them.
    pub(crate) async fn on<L: RateLimiter>(
        &self,
        limiter: &L,
        held: &[Held],
        configured: &[(Budget, u64)],
        ceilings: &Ceilings,
        signal: Signal,
        now: u64,
    ) -> Result<Vec<(Budget, u64)>, Error> {
        let window_ns = budgets::shortest_window_ns(held);
        if !self.state().acts(signal, now) {
            return Ok(Vec::new());
        }
        // A 429 that changes the scale needs to know how long the claims already queued at
        // the old pace take to go out: one usage report, unless learning read one already.
        let mut filled = Vec::new();
        let held = match signal {
            Signal::Refused(_) if budgets::backlog_ns(held).is_none() => {
                filled.extend_from_slice(held);
                budgets::fill_remaining(limiter, &mut filled).await?;
                &filled[..]
            }
            _ => held,
        };
        let backlog_ns = budgets::backlog_ns(held).unwrap_or(0);
        let Some(scale) = self.state().next(signal, now, window_ns, backlog_ns) else {
            return Ok(Vec::new());
        };
        if signal == Signal::Headers {
            // The headers' limits are applied as they come; the scale only goes back to 1.
            return Ok(Vec::new());
        }
        let changes: Vec<(Budget, u64)> = held
            .iter()
            .filter_map(|h| {
                let c = configured.iter().find(|(b, _)| *b == h.budget)?.1;
                // Unlimited stays unlimited; a limit stays at least 1, and within the ceiling
                // a learned limit would be held to.
                let want = (c as u128 * scale as u128 / ONE as u128).max(1) as u64;
                let want = want.min(ceilings.of(h));
                (c != 0 && want != h.limit).then_some((h.budget, want))
            })
            .collect();
        if !changes.is_empty() {
            budgets::set_limits(limiter, held, &changes).await?;
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 60_000_000_000;
    const S: u64 = 1_000_000_000;

    fn refused(s: &mut State, now: u64) -> Option<u64> {
        s.next(Signal::Refused(Duration::from_secs(1)), now, W, 0)
    }

    fn served(s: &mut State, now: u64) -> Option<u64> {
        s.next(Signal::Served, now, W, 0)
    }

    #[test]
    fn a_429_decreases_once_per_guard_and_probing_stops_below_the_refused_level() {
        let mut s = State::default();
        assert_eq!(refused(&mut s, 10 * S), Some(700_000));
        // In flight from before the change: nothing more until cooldown + 1 s have passed.
        assert_eq!(refused(&mut s, 11 * S), None);
        assert_eq!(refused(&mut s, 12 * S), Some(490_000));
        assert_eq!(s.refused, Some(700_000));
        // No probe within a window of the 429; then half the gap to 0.95 × 0.7 each window.
        assert_eq!(served(&mut s, 12 * S + W - 1), None);
        assert_eq!(served(&mut s, 12 * S + W), Some(577_500));
        assert_eq!(served(&mut s, 12 * S + W + S), None);
        let mut t = 12 * S + 2 * W;
        let mut last = 577_500;
        while let Some(x) = served(&mut s, t) {
            assert!(x > last && x <= 665_000);
            last = x;
            t += W;
        }
        assert_eq!(last, 665_000);
        assert!(t < 12 * S + 10 * W, "settles within a few windows");
    }

    #[test]
    fn a_probe_that_draws_a_429_falls_back_to_the_level_that_held() {
        let mut s = State::default();
        refused(&mut s, 0); // 0.7, refused at 1
        assert_eq!(served(&mut s, W), Some(825_000)); // 0.7 held a window
        assert_eq!(
            refused(&mut s, W + 10 * S),
            Some(700_000),
            "back to 0.7, not 0.5775"
        );
        assert_eq!(s.refused, Some(825_000));
        // 0.7 fails too: a decrease, and nothing counts as holding any more.
        assert_eq!(refused(&mut s, W + 20 * S), Some(490_000));
        assert_eq!(s.held, None);
        assert_eq!(s.refused, Some(700_000));
    }

    #[test]
    fn the_backlog_at_the_old_pace_extends_the_guard() {
        let mut s = State::default();
        let cooldown = Signal::Refused(Duration::from_secs(1));
        assert_eq!(s.next(cooldown, 0, W, 20 * S), Some(700_000));
        assert_eq!(
            s.next(cooldown, 20 * S, W, 0),
            None,
            "queued at the old pace"
        );
        assert_eq!(s.next(cooldown, 21 * S, W, 0), Some(490_000));
    }

    #[test]
    fn the_refused_level_relaxes_after_the_hold_and_headers_take_over() {
        let mut s = State {
            policy: AdaptPolicy::new().hold(2),
            ..State::default()
        };
        refused(&mut s, 0);
        assert_eq!(served(&mut s, W), Some(825_000)); // half way to 0.95
                                                      // Two windows quiet: the refused level rises past 1, so the target is 1.
        assert_eq!(served(&mut s, 2 * W), Some(912_500));
        assert_eq!(s.refused, None);
        assert_eq!(served(&mut s, 3 * W), Some(956_250));
        refused(&mut s, 4 * W);
        assert_eq!(s.next(Signal::Headers, 4 * W + 1, W, 0), Some(ONE));
        assert_eq!(refused(&mut s, 5 * W), None, "headers decide from now on");
    }

    #[test]
    fn the_floor_and_an_off_policy() {
        let mut s = State::default();
        for i in 0..20 {
            refused(&mut s, i * 10 * S);
        }
        assert_eq!(s.scale, 125_000);
        let mut s = State {
            policy: AdaptPolicy::off(),
            ..State::default()
        };
        assert_eq!(refused(&mut s, 0), None);
        // Out-of-range settings are clamped.
        let p = AdaptPolicy::new()
            .decrease(f64::NAN)
            .margin(2.0)
            .floor(0.0)
            .hold(0)
            .relax(-1.0);
        assert_eq!(
            (p.decrease, p.margin, p.floor, p.hold, p.relax),
            (50_000, 500_000, 10_000, 1, 10_000)
        );
    }
}
