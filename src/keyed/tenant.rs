//! One tenant: a state word per budget of its class and one *gate* word. The words are the
//! bucket state words of `bucket.rs` (generation + TAT), decided by the class's parameter
//! slots through the same `View`; the gate is what makes dropping an idle tenant safe.
//!
//! # The gate
//!
//! A lock-free reader may still hold a tenant that has just been dropped from the map: it
//! must not be admitted against that orphan, or its units would be lost and the key would
//! come back more permissive than it left. So every write that must count (an admission, a
//! charge) ends with `gate.fetch_add(1)` *after* its state CASes, and fails if the gate it
//! returns is marked. The evictor loads the gate, checks that every word is full at its
//! reading, and marks the gate with one CAS from the value it loaded:
//!
//! - a write whose gate add precedes the evictor's load is visible to the evictor's checks
//!   (the add is AcqRel, after the write's CASes; the load is Acquire, before the checks);
//! - a write whose add falls between the load and the CAS makes the CAS fail: not evicted;
//! - a write whose add follows the CAS sees the mark: it did not happen, and starts over on
//!   the key's new tenant.
//!
//! The gate only grows (adds and one mark), so no CAS on it can succeed by ABA. Its low 62
//! bits double as the *slide total* of refunds (see [`Tenant::refund`]): a refund that moves
//! the slots placed after its grant adds the nanoseconds it slid, rounded up, before its
//! CAS, and a grant records the gate before its own CASes. `gate_now - gate_grant` then
//! bounds from above how far a grant's slot has slid, in every budget, plus one nanosecond
//! per admission since (conservative: a refund judged at an earlier end gives back less).
//!
//! Two marks: [`EVICTED`] (every word was full: the tenant says nothing a fresh one would
//! not) and [`MOVED`] (its state is being carried to another class: wait for the move).

use super::class::Class;
use crate::bucket::{pack, Give, Grant, Refusal, View};
use crate::gcra::{self, MAX_UNITS};
use crate::sync::{AtomicU64, Backoff, Ordering::*};
use crate::take::Ask;

/// The gate mark of a tenant dropped as idle.
pub(crate) const EVICTED: u64 = 1 << 63;
/// The gate mark of a tenant whose state is moving to another class.
pub(crate) const MOVED: u64 = 1 << 62;
const MARKS: u64 = EVICTED | MOVED;

/// Why a tenant operation did not complete on this tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    /// Budget `usize` refused.
    Refused(usize, Refusal),
    /// The tenant was dropped as idle: retry on the key's current tenant.
    Evicted,
    /// The tenant is moving to another class: retry once the move is done.
    Moved,
}

fn miss_of(gate: u64) -> Miss {
    if gate & EVICTED != 0 {
        Miss::Evicted
    } else {
        Miss::Moved
    }
}

/// The refusal a caller should see: "never" (capacity) before "not now", else the longest
/// wait.
#[cold]
fn worse(a: Option<(usize, Refusal)>, b: (usize, Refusal)) -> (usize, Refusal) {
    let wait = |r: &Refusal| match r {
        Refusal::Capacity(_) => u64::MAX,
        Refusal::Wait { rate, target } => rate.ns_for(*target),
    };
    match a {
        Some(a) if wait(&a.1) >= wait(&b.1) => a,
        _ => b,
    }
}

/// What an admission took, per budget: enough to settle it. `Grant::slid` holds the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Taken<const N: usize> {
    pub version: u64,
    pub grants: [Grant; N],
}

/// A tenant of a class with at most `N` budgets.
pub(crate) struct Tenant<const N: usize> {
    words: [AtomicU64; N],
    gate: AtomicU64,
}

impl<const N: usize> Tenant<N> {
    /// A tenant that is full at reading `at` (and, for an older reading, holds what was used
    /// between it and `at`: nothing older than `at` is known about a new key).
    pub(crate) fn fresh(class: &Class<N>, at: u64) -> Self {
        Tenant {
            words: std::array::from_fn(|i| {
                if i >= class.len() {
                    return AtomicU64::new(0);
                }
                let v = class.current(i, 0);
                let tat = v.rate.map_or(0, |r| r.at(at).lo);
                AtomicU64::new(pack(v.version, tat))
            }),
            gate: AtomicU64::new(0),
        }
    }

    /// A tenant holding `tats` (TATs under `class`'s version `version`).
    pub(crate) fn with_state(version: u64, tats: [u64; N]) -> Self {
        Tenant {
            words: std::array::from_fn(|i| AtomicU64::new(pack(version, tats[i]))),
            gate: AtomicU64::new(0),
        }
    }

    /// Marks this tenant as dropped if every word is full at reading `at` under the class's
    /// current version; true if it is (now or already) marked as dropped.
    pub(crate) fn try_evict(&self, class: &Class<N>, at: u64) -> bool {
        let gate = self.gate.load(Acquire);
        if gate & MARKS != 0 {
            return gate & EVICTED != 0;
        }
        let version = class.version();
        for i in 0..class.len() {
            let state = self.words[i].load(Acquire);
            match class.view(i, state) {
                Some(v) if v.version == version && v.is_full_at(at) => {}
                _ => return false,
            }
        }
        self.gate
            .compare_exchange(gate, gate | EVICTED, AcqRel, Relaxed)
            .is_ok()
    }

    /// This tenant, marked as moved: a placeholder that holds a key's place while its state
    /// lives elsewhere.
    pub(crate) fn into_moved(self) -> Self {
        self.gate.store(MOVED, Relaxed);
        self
    }

    /// Moves every word behind the class's version across (a limit change's walk).
    pub(crate) fn migrate_all(&self, class: &Class<N>, fresh: &impl Fn() -> u64) {
        for i in 0..class.len() {
            loop {
                let state = self.words[i].load(Acquire);
                match class.view(i, state) {
                    Some(v) if v.version == class.version() => break,
                    _ if self.gate.load(Acquire) & MARKS != 0 => return,
                    _ => self.migrate(class, i, state, fresh()),
                }
            }
        }
    }

    /// Whether this tenant was dropped as idle.
    pub(crate) fn is_evicted(&self) -> bool {
        self.gate.load(Acquire) & EVICTED != 0
    }

    /// Whether this tenant is moving to another class.
    pub(crate) fn is_moved(&self) -> bool {
        self.gate.load(Acquire) & MOVED != 0
    }

    /// Stops every later admission and charge on this tenant (they see [`MOVED`] and wait)
    /// and returns its TATs, carried to `to` at reading `at`: what a move to another class
    /// starts from. `None` if it was dropped as idle first.
    pub(crate) fn freeze(&self, from: &Class<N>, to: &Class<N>, at: u64) -> Option<[u64; N]> {
        let gate = self.gate.fetch_or(MOVED, AcqRel);
        if gate & EVICTED != 0 {
            return None;
        }
        // Every write that completed did so before the mark and is visible now; a write
        // still in flight fails at the gate, so what is read here is at least what counts.
        Some(std::array::from_fn(|i| {
            if i >= to.len() {
                return 0;
            }
            let n = to.current(i, 0);
            let Some(nr) = n.rate else { return 0 };
            let drained = nr.at(at).hi.saturating_add(n.burst_q()).min(MAX_UNITS);
            if i >= from.len() {
                return nr.at(at).lo;
            }
            let state = self.words[i].load(Acquire);
            match from.view(i, state) {
                Some(o) => match o.rate {
                    Some(or) => gcra::rescale(o.tat(), or, or.at(at), nr, nr.at(at)),
                    None => nr.at(at).lo,
                },
                // Unreadable: two versions behind. Nothing is known: drained, the safe side.
                None => drained,
            }
        }))
    }

    /// Moves word `i` (read as `state`) to the class's current version at reading `now`
    /// (one CAS; the caller reads again either way).
    #[cold]
    #[inline(never)]
    fn migrate(&self, class: &Class<N>, i: usize, state: u64, now: u64) {
        let old = class.view(i, state);
        let cur = class.current(i, 0);
        if old.is_some_and(|o| o.version == cur.version) {
            return;
        }
        let tat = match (old, cur.rate) {
            (_, None) => 0,
            (Some(o), Some(n)) => match o.rate {
                Some(or) => gcra::rescale(o.tat(), or, or.at(now), n, n.at(now)),
                // From unlimited nothing was counted.
                None => 0,
            },
            // More than one version behind (a tenant created while two changes completed):
            // its quanta are unknown, so it is taken as drained at `now`.
            (None, Some(n)) => n.at(now).hi.saturating_add(cur.burst_q()).min(MAX_UNITS),
        };
        let _ = self.words[i].compare_exchange(state, pack(cur.version, tat), AcqRel, Relaxed);
    }

    /// A consistent view of every word under the current version (migrating any word
    /// behind), with the gate loaded before them; or the mark that stops everything.
    #[inline]
    fn views(&self, class: &Class<N>, fresh: &impl Fn() -> u64) -> Result<(u64, [View; N]), Miss> {
        let backoff = Backoff::new();
        'again: loop {
            let gate = self.gate.load(Acquire);
            if gate & MARKS != 0 {
                return Err(miss_of(gate));
            }
            let version = class.version();
            let mut views = [None; N];
            for (i, slot) in views.iter_mut().enumerate().take(class.len()) {
                let state = self.words[i].load(Acquire);
                match class.view(i, state) {
                    Some(v) if v.version == version => *slot = Some(v),
                    _ => {
                        self.migrate(class, i, state, fresh());
                        backoff.spin();
                        continue 'again;
                    }
                }
            }
            let views = views.map(|v| v.unwrap_or_else(|| class.current(0, 0)));
            return Ok((gate, views));
        }
    }

    /// Takes `ask` at reading `now` from every budget, all or nothing, for immediate release:
    /// each budget's TAT becomes `max(tat, now) + n`. `fresh` gives a reading for refunds
    /// and migrations (no older than any admission the words reflect).
    #[inline]
    pub(crate) fn take(
        &self,
        class: &Class<N>,
        now: u64,
        ask: Ask,
        fresh: impl Fn() -> u64,
    ) -> Result<Taken<N>, Miss> {
        let backoff = Backoff::new();
        'again: loop {
            let (gate, views) = self.views(class, &fresh)?;
            let mut nexts = [0u64; N];
            let mut refused = None;
            for i in 0..class.len() {
                let n = ask.units(class.budget(i));
                nexts[i] = if n == 0 && ask.skip_zero {
                    views[i].tat()
                } else {
                    match views[i].admit(now, n) {
                        Ok(next) => next,
                        Err(r) => {
                            refused = Some(worse(refused, (i, r)));
                            0
                        }
                    }
                };
            }
            if let Some((i, r)) = refused {
                return Err(Miss::Refused(i, r));
            }
            let version = views[0].version;
            let mut grants = [Grant::default(); N];
            for i in 0..class.len() {
                let v = &views[i];
                if !self.commit(i, v, nexts[i]) {
                    self.roll_back(class, version, &grants[..i], &fresh);
                    backoff.spin();
                    continue 'again;
                }
                grants[i] = Grant {
                    start: v.tat(),
                    end: nexts[i],
                    // This take's own gate add below slides nothing.
                    slid: gate + 1,
                };
            }
            // The gate: after every state CAS (see the module docs).
            let g = self.gate.fetch_add(1, AcqRel);
            if g & MARKS != 0 {
                return Err(miss_of(g));
            }
            return Ok(Taken { version, grants });
        }
    }

    #[inline]
    fn commit(&self, i: usize, v: &View, next: u64) -> bool {
        next == v.tat()
            || self.words[i]
                .compare_exchange_weak(v.state(), pack(v.version, next), AcqRel, Relaxed)
                .is_ok()
    }

    #[cold]
    fn roll_back(
        &self,
        class: &Class<N>,
        version: u64,
        grants: &[Grant],
        fresh: &impl Fn() -> u64,
    ) {
        for (i, g) in grants.iter().enumerate() {
            self.refund(class, i, version, g, Give::All, fresh);
        }
    }

    /// Takes `n` units of budget `i` at `now` unconditionally, as debt if need be, then
    /// passes the gate. Returns the reading at which the budget is out of debt, or the mark
    /// that means the charge did not land (retry on the key's current tenant).
    pub(crate) fn charge(
        &self,
        class: &Class<N>,
        i: usize,
        now: u64,
        n: u64,
        fresh: impl Fn() -> u64,
    ) -> Result<u64, Miss> {
        let backoff = Backoff::new();
        let ready = loop {
            let (_, views) = self.views(class, &fresh)?;
            let v = &views[i];
            let Some(rate) = v.rate else { return Ok(now) };
            let nq = rate.quanta(n);
            if nq == 0 {
                return Ok(now);
            }
            let next = gcra::claim(v.tat(), rate.at(now), nq);
            if self.commit(i, v, next) {
                break rate.ns_for(gcra::ready(next, v.burst_q())).max(now);
            }
            backoff.spin();
        };
        let g = self.gate.fetch_add(1, AcqRel);
        if g & MARKS != 0 {
            return Err(miss_of(g));
        }
        Ok(ready)
    }

    /// Gives back `give` of budget `i`'s grant taken under `version`, under the rule of
    /// [`gcra::refund`] judged where the grant's slot now ends at most (its recorded end less
    /// the slide bound of the gate), and never below the refund's own reading: the TAT is
    /// not moved into the past. No waiter is ever pending on a tenant, so nothing else
    /// limits it. Nothing is given back on a marked tenant or across a limit change.
    pub(crate) fn refund(
        &self,
        class: &Class<N>,
        i: usize,
        version: u64,
        grant: &Grant,
        give: Give,
        fresh: &impl Fn() -> u64,
    ) {
        let backoff = Backoff::new();
        loop {
            let state = self.words[i].load(Acquire);
            let Some(v) = class.view(i, state) else {
                return;
            };
            let Some(rate) = v.rate else { return };
            // Relaxed: a slide is added before the state CAS our Acquire load synchronised
            // with.
            let gate = self.gate.load(Relaxed);
            if v.version != version || gate & MARKS != 0 {
                return;
            }
            let q = match give {
                Give::Units(n) => rate.quanta_floor(n),
                Give::All => grant.end.saturating_sub(grant.start),
            };
            if q == 0 {
                return;
            }
            let slid = rate.at(gate.saturating_sub(grant.slid)).hi;
            let end = grant.end.saturating_sub(slid);
            let u = rate.at(fresh()).hi;
            let tat = v.tat();
            let next = gcra::refund(tat, end, u, q, None).max(u.min(tat));
            if next == tat {
                return;
            }
            if tat > end {
                // Slots placed after the grant slide back: recorded before the CAS (lost if
                // it fails, which only overstates the slide).
                let ns = rate.ns_for(tat - next).clamp(1, MOVED - 1);
                self.gate.fetch_add(ns, AcqRel);
            }
            if self.commit(i, &v, next) {
                return;
            }
            backoff.spin();
        }
    }

    /// Budget `i`'s view now (for reports), or `None` on a marked tenant.
    pub(crate) fn view(&self, class: &Class<N>, i: usize, fresh: impl Fn() -> u64) -> Option<View> {
        self.views(class, &fresh).ok().map(|(_, v)| v[i])
    }
}

#[cfg(all(test, not(ratekeeper_loom)))]
mod tests {
    use super::*;
    use crate::budget::{Cost, Limit};
    use std::time::Duration;

    /// One request per 8,192 ns and one token per 1,024 ns, bursts of 8 requests and 64
    /// tokens: binary-exact rates, so readings at multiples of 1,024 ns are exact.
    const W: u64 = 65_536;
    const T0: u64 = 100 * W;

    fn class() -> Class<2> {
        let w = Duration::from_nanos(W);
        Class::new(&[Limit::requests(8).per(w), Limit::tokens(64).per(w)]).unwrap()
    }

    fn ask(tokens: u64) -> Ask {
        Ask::request(Cost::from(tokens))
    }

    #[test]
    fn a_fresh_tenant_admits_its_burst_then_refuses() {
        let c = class();
        let t = Tenant::fresh(&c, T0);
        for _ in 0..8 {
            t.take(&c, T0, ask(8), || T0).unwrap();
        }
        assert!(matches!(
            t.take(&c, T0, ask(0), || T0),
            Err(Miss::Refused(0, Refusal::Wait { .. }))
        ));
        // The longest wait names the budget: 8 tokens take 8,192 ns, as one request does.
        assert!(t.take(&c, T0 + 8_191, ask(8), || T0 + 8_191).is_err());
        assert!(t.take(&c, T0 + 8_192, ask(8), || T0 + 8_192).is_ok());
        assert!(matches!(
            t.take(&c, T0 + W, ask(65), || T0 + W),
            Err(Miss::Refused(1, Refusal::Capacity(64)))
        ));
    }

    #[test]
    fn a_fresh_tenant_is_full_only_from_its_creation_on() {
        let c = class();
        let t = Tenant::fresh(&c, T0);
        // A window before its creation, a whole window's use is unknown: taken as used.
        assert!(t.take(&c, T0 - W, ask(0), || T0).is_err());
        assert!(t.take(&c, T0, ask(64), || T0).is_ok());
    }

    #[test]
    fn only_a_full_tenant_is_evicted_and_then_refuses_everything() {
        let c = class();
        let t = Tenant::fresh(&c, T0);
        t.take(&c, T0, ask(8), || T0).unwrap();
        assert!(!t.try_evict(&c, T0), "holds units in use");
        assert!(!t.try_evict(&c, T0 + 8_191));
        assert!(t.try_evict(&c, T0 + 8_192), "full again");
        assert!(t.is_evicted());
        assert_eq!(t.take(&c, T0 + W, ask(1), || T0 + W), Err(Miss::Evicted));
        assert_eq!(t.charge(&c, 1, T0 + W, 5, || T0 + W), Err(Miss::Evicted));
    }

    #[test]
    fn an_admission_after_the_evictors_load_defeats_it() {
        let c = class();
        let t = Tenant::fresh(&c, T0);
        let gate = t.gate.load(SeqCst);
        t.take(&c, T0 + W, ask(1), || T0 + W).unwrap();
        // The evictor's CAS from the gate it loaded before the admission fails.
        assert!(t
            .gate
            .compare_exchange(gate, gate | EVICTED, SeqCst, SeqCst)
            .is_err());
    }

    #[test]
    fn a_refund_gives_back_the_unexpired_surplus_and_respects_slides() {
        let c = class();
        let t = Tenant::fresh(&c, T0);
        let a = t.take(&c, T0, ask(32), || T0).unwrap(); // tokens [0, 32) after T0
        let b = t.take(&c, T0, ask(16), || T0).unwrap(); // tokens [32, 48)
        let used = |now| {
            let v = t.view(&c, 1, || now).unwrap();
            v.tat() - v.rate.unwrap().at(now).lo
        };
        let q = |n| c.current(1, 0).rate.unwrap().quanta(n);
        assert_eq!(used(T0), q(48));
        // A gives back all 32: B's slot slides back to [0, 16). The gate bound counts B's
        // admission as a slide of 1 ns too: at most one quantum less comes back.
        t.refund(&c, 1, a.version, &a.grants[1], Give::Units(32), &|| T0);
        assert!(used(T0) >= q(16) && used(T0) <= q(16) + 1, "{}", used(T0));
        // 10 token units later 6 of B's units are left: judged at its end less the slide,
        // B gives back those and no more (its expired part stays counted).
        let t10 = T0 + 10 * 1_024;
        t.refund(&c, 1, b.version, &b.grants[1], Give::Units(16), &|| t10);
        assert!(used(t10) <= 1, "B's slot ended 6 units on: {}", used(t10));
        let v = t.view(&c, 1, || t10).unwrap();
        assert!(
            v.tat() >= v.rate.unwrap().at(t10).hi,
            "the TAT is never moved into the past"
        );
        // Nothing comes back twice, nor across a limit change.
        let g = t.take(&c, t10, ask(16), || t10).unwrap();
        let w = Duration::from_nanos(W);
        c.set_limits(&[Limit::tokens(128).per(w)], || t10, |_| {})
            .unwrap();
        let before = used(t10);
        t.refund(&c, 1, g.version, &g.grants[1], Give::Units(16), &|| t10);
        assert_eq!(used(t10), before);
    }

    #[test]
    fn a_limit_change_migrates_a_word_on_first_touch() {
        let c = class();
        let t = Tenant::fresh(&c, T0);
        for _ in 0..8 {
            t.take(&c, T0, ask(0), || T0).unwrap();
        }
        // Twice the rate: the 8 requests in use carry across, and the bucket holds 16.
        let w = Duration::from_nanos(W);
        c.set_limits(&[Limit::requests(16).per(w)], || T0, |_| {})
            .unwrap();
        for _ in 0..8 {
            t.take(&c, T0, ask(0), || T0).unwrap();
        }
        assert!(t.take(&c, T0, ask(0), || T0).is_err(), "8 + 8 = 16 in use");
    }
}
