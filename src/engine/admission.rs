//! Admission by expected wait: how long a request arriving now would wait for a slot, from
//! the work ahead of it and the measured step costs of its model, and whether that fits.
//!
//! Pure functions of a [`Backlog`] snapshot and [`Costs`], so they can be unit-tested and
//! benchmarked alone; [`super::dispatcher`] keeps the snapshot current ([`Gauge`]) and the
//! server asks it before it queues a request.
//!
//! A sequence takes a slot for its prompt's prefill step and then one decode step per token
//! after the first. A request arriving now gets a slot at once if one is free; otherwise at
//! the `ahead - slots + 1`-th slot release (admission is FIFO). Among the running sequences
//! the releases come in the order of their steps left; past them the queued sequences ahead
//! release `slots` at a time per the steps each takes. Those steps cost a full decode step
//! each, and every prompt token ahead its own time on top ([`StepFit`] splits a step's time
//! into a fixed part and a part per token). A sequence's decode steps are not known in
//! advance: `max_tokens` bounds them, and the share of it that ended sequences actually used
//! (`completion_share`, measured) scales the bound. Past the running sequences, once the
//! engine has been busy for two seconds, the measured rate at which it frees slots
//! ([`ReleaseRate`]) replaces the step model. No correction is learned from the waits
//! observed: one tried swung between half and twice the prediction with the load's lag and
//! doubled the tail of the waits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The work ahead of a request arriving now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backlog {
    /// Sequences holding a slot (or preempted, to resume first).
    pub running: usize,
    /// Their expected decode steps left, summed.
    pub running_steps: u64,
    /// The steps each has left (its prefill step included while prefilling), ascending: the
    /// order in which they free their slots.
    pub running_left: Vec<u32>,
    /// Sequences queued for a slot.
    pub queued: usize,
    /// Their expected decode steps, summed.
    pub queued_steps: u64,
    /// Prompt tokens still to prefill, of running and queued sequences.
    pub prompt_tokens: u64,
}

/// What the engine's steps cost, measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Costs {
    /// Sequences that decode side by side: the batch size, or fewer if the KV pool holds
    /// fewer sequences of the current mix.
    pub slots: usize,
    /// Seconds of a step of `slots` decode tokens.
    pub decode_step_s: f64,
    /// Seconds per prompt token: the marginal cost of a token in a step.
    pub prefill_token_s: f64,
    /// Sequences the engine ends per second while requests wait for a slot ([`ReleaseRate`]);
    /// 0 until measured.
    pub release_rate: f64,
}

/// How fast a busy engine frees slots: sequences ended per second over the stretches of time
/// when requests waited for a slot (moving average of one-second windows). It carries what a
/// model of steps would have to guess: how the batching policy lets new prompts in, their
/// prefill, the mix of lengths.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReleaseRate {
    window_s: f64,
    window_ended: u64,
    rate: f64,
    /// Windows closed in this busy spell: the first of a spell is skipped (a burst into an
    /// idle engine spends it prefilling the whole batch, and ends few sequences).
    spell_windows: u64,
}

impl ReleaseRate {
    const WINDOW_S: f64 = 1.0;
    const ALPHA: f64 = 0.3;

    /// Adds a step of `secs` that ended `ended` sequences; counted only if requests were
    /// waiting for a slot (`saturated`).
    pub fn record(&mut self, secs: f64, ended: usize, saturated: bool) {
        if !saturated {
            self.spell_windows = 0;
            self.window_s = 0.0;
            self.window_ended = 0;
            return;
        }
        self.window_s += secs;
        self.window_ended += ended as u64;
        if self.window_s >= Self::WINDOW_S - 1e-9 {
            let r = self.window_ended as f64 / self.window_s;
            self.spell_windows += 1;
            if self.spell_windows > 1 {
                self.rate = if self.rate == 0.0 {
                    r
                } else {
                    self.rate + Self::ALPHA * (r - self.rate)
                };
            }
            self.window_s = 0.0;
            self.window_ended = 0;
        }
    }

    /// Sequences per second; 0 until a window has been measured. (Taking the lower of this
    /// and the last window, to follow a slowdown at once, made one odd window, at the end of
    /// a burst, refuse a whole closed loop; it did not shorten the tail either.)
    pub fn per_s(&self) -> f64 {
        self.rate
    }
}

/// A step's time as a fixed part plus a part per token, fitted to the steps run (least
/// squares over exponentially weighted moments). A CPU step streams every weight once
/// whatever its batch, so the fixed part is large: a cost per token taken from the average
/// step would make a small step's cost look like a large one's per-token cost.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepFit {
    n: u64,
    mean_tokens: f64,
    mean_s: f64,
    mean_tokens2: f64,
    mean_tokens_s: f64,
}

impl StepFit {
    /// Weight of each new step.
    const ALPHA: f64 = 0.05;

    /// Adds a step of `tokens` tokens that took `secs`.
    pub fn record(&mut self, tokens: usize, secs: f64) {
        let x = tokens as f64;
        let a = if self.n == 0 { 1.0 } else { Self::ALPHA };
        self.n += 1;
        self.mean_tokens += a * (x - self.mean_tokens);
        self.mean_s += a * (secs - self.mean_s);
        self.mean_tokens2 += a * (x * x - self.mean_tokens2);
        self.mean_tokens_s += a * (x * secs - self.mean_tokens_s);
    }

    /// (fixed seconds per step, seconds per token); zeros before any step.
    pub fn coefficients(&self) -> (f64, f64) {
        if self.n == 0 || self.mean_tokens <= 0.0 {
            return (0.0, 0.0);
        }
        let var = self.mean_tokens2 - self.mean_tokens * self.mean_tokens;
        let cov = self.mean_tokens_s - self.mean_tokens * self.mean_s;
        // Steps all of one size say nothing of the split: all of it per token.
        if var < 1.0 {
            return (0.0, self.mean_s / self.mean_tokens);
        }
        let per_token = (cov / var).clamp(0.0, self.mean_s / self.mean_tokens);
        let fixed = (self.mean_s - per_token * self.mean_tokens).max(0.0);
        (fixed, per_token)
    }

    /// The costs for `slots` sequences decoding side by side.
    pub fn costs(&self, slots: usize) -> Costs {
        let (fixed, per_token) = self.coefficients();
        Costs {
            slots,
            decode_step_s: fixed + per_token * slots as f64,
            prefill_token_s: per_token,
            release_rate: 0.0,
        }
    }
}

/// The predicted wait for a slot, in seconds, of a request arriving now. With a slot free it
/// is admitted at the next step: no wait (the prompts ahead of it share its steps, which is
/// service time, not waiting).
pub fn predicted_wait_s(b: &Backlog, c: &Costs) -> f64 {
    let slots = c.slots.max(1);
    let ahead = b.running + b.queued;
    if ahead < slots {
        return 0.0;
    }
    let releases = b.running + b.queued - slots + 1;
    if releases > b.running_left.len() && c.release_rate > 0.0 {
        // Past the running wave: at the rate the engine has been freeing slots when busy.
        return releases as f64 / c.release_rate;
    }
    let prefill_s = b.prompt_tokens as f64 * c.prefill_token_s;
    steps_to_slot(b, slots) * c.decode_step_s + prefill_s
}

/// Full steps until the `ahead - slots + 1`-th slot release, the one a request arriving now
/// waits for. Within the running sequences that is the one with that many steps left (same
/// length requests started together end together: the wait is a whole wave, not a share of
/// it); past them (before a release rate has been measured) the queued sequences ahead
/// release `slots` per the steps each takes.
fn steps_to_slot(b: &Backlog, slots: usize) -> f64 {
    let releases = b.running + b.queued - slots + 1;
    let left = &b.running_left;
    if releases <= left.len() {
        return f64::from(left[releases - 1]);
    }
    let wave = left.last().map_or(0.0, |&s| f64::from(s));
    // Each queued sequence: its decode steps and its prefill step.
    let per_queued = match b.queued {
        0 => 1.0,
        q => b.queued_steps as f64 / q as f64 + 1.0,
    };
    wave + (releases - left.len()) as f64 / slots as f64 * per_queued
}

/// Decode steps a request of `max_tokens` is expected to take: the share of `max_tokens` that
/// finished sequences used, rounded up, less the first token (sampled at the prefill).
pub fn expected_steps(max_tokens: usize, completion_share: f64) -> u64 {
    let tokens = (max_tokens as f64 * completion_share.clamp(0.0, 1.0)).ceil() as u64;
    tokens.max(1) - 1
}

/// Longest `Retry-After`, in seconds: past a minute a client should look elsewhere, and the
/// OpenAI SDKs honour at most 60 s.
pub const RETRY_AFTER_MAX_S: u64 = 60;

/// The verdict on a request arriving now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    Admit,
    /// The wait would exceed the limit by about `retry_after_s` seconds: by then the work
    /// ahead will have shrunk by that much, if no more arrives.
    Refuse {
        retry_after_s: u64,
    },
}

/// Admits a request whose predicted wait fits `max_wait_s`; refuses it otherwise, with a
/// `Retry-After` of when it would fit plus `spread` (0 to 1) of `max_wait_s`, in whole
/// seconds from 1 to [`RETRY_AFTER_MAX_S`]. The spread matters past the limit: every refused
/// client would fit at about the same moment, but the queue then takes only as many as the
/// engine frees in the meantime; the others would be refused again, each refusal taking CPU
/// from the engine. Spread over the wait limit, returns come at about the rate a full queue
/// drains (measured at 1,000 connections on the default model: 433 refusals a second
/// without the spread slowed the engine by a fifth; docs/OPERATIONS.md § Admission).
pub fn decide(predicted_wait_s: f64, max_wait_s: f64, spread: f64) -> Verdict {
    if predicted_wait_s <= max_wait_s {
        return Verdict::Admit;
    }
    let retry_s = (predicted_wait_s - max_wait_s + spread.clamp(0.0, 1.0) * max_wait_s).ceil();
    Verdict::Refuse {
        retry_after_s: (retry_s as u64).clamp(1, RETRY_AFTER_MAX_S),
    }
}

/// The live admission figures of one engine: written by its dispatcher after every step
/// (running work and costs) and by submitters and the queue's tickets (queued work).
#[derive(Debug, Default)]
pub struct Gauge {
    running: AtomicUsize,
    running_steps: AtomicU64,
    running_prompt_tokens: AtomicU64,
    queued: AtomicUsize,
    queued_steps: AtomicU64,
    queued_prompt_tokens: AtomicU64,
    slots: AtomicUsize,
    /// `Backlog::running_left` of the last step (a short sorted list; the lock is held for a
    /// copy).
    running_left: Mutex<Vec<u32>>,
    /// Held while a request is decided and, if admitted, counted: otherwise requests
    /// arriving together (clients whose Retry-After ends in the same second) all see the
    /// same queue, all fit, and together overfill it.
    deciding: Mutex<()>,
    mean_prompt_tokens: AtomicU64,
    decode_step_s: AtomicF64,
    prefill_token_s: AtomicF64,
    release_rate: AtomicF64,
    completion_share: AtomicF64,
}

/// An `f64` in an `AtomicU64` (bits), for figures one thread writes and others read.
#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn load(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn store(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
}

/// What the dispatcher publishes after a step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Published {
    pub running: usize,
    pub running_steps: u64,
    /// Ascending (see [`Backlog::running_left`]).
    pub running_left: Vec<u32>,
    pub running_prompt_tokens: u64,
    pub costs: Costs,
    pub completion_share: f64,
    /// Moving average of the prompt tokens of admitted requests (for requests counted before
    /// they are tokenized).
    pub mean_prompt_tokens: u64,
}

impl Gauge {
    /// A gauge for an engine of `slots` slots, with nothing measured yet (every request is
    /// expected to use its whole `max_tokens`).
    pub fn new(slots: usize) -> Gauge {
        let g = Gauge::default();
        g.slots.store(slots, Ordering::Relaxed);
        g.completion_share.store(1.0);
        g
    }

    pub fn publish(&self, p: &Published) {
        self.running.store(p.running, Ordering::Relaxed);
        self.running_steps.store(p.running_steps, Ordering::Relaxed);
        let mut left = self.left();
        left.clear();
        left.extend_from_slice(&p.running_left);
        drop(left);
        self.running_prompt_tokens
            .store(p.running_prompt_tokens, Ordering::Relaxed);
        self.slots.store(p.costs.slots, Ordering::Relaxed);
        self.decode_step_s.store(p.costs.decode_step_s);
        self.prefill_token_s.store(p.costs.prefill_token_s);
        self.release_rate.store(p.costs.release_rate);
        self.completion_share.store(p.completion_share);
        self.mean_prompt_tokens
            .store(p.mean_prompt_tokens, Ordering::Relaxed);
    }

    /// The running sequences' steps left (a poisoned lock still holds a valid list).
    fn left(&self) -> MutexGuard<'_, Vec<u32>> {
        self.running_left.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mean_prompt_tokens(&self) -> u64 {
        self.mean_prompt_tokens.load(Ordering::Relaxed)
    }

    pub fn backlog(&self) -> Backlog {
        Backlog {
            running: self.running.load(Ordering::Relaxed),
            running_steps: self.running_steps.load(Ordering::Relaxed),
            running_left: self.left().clone(),
            queued: self.queued.load(Ordering::Relaxed),
            queued_steps: self.queued_steps.load(Ordering::Relaxed),
            prompt_tokens: self.running_prompt_tokens.load(Ordering::Relaxed)
                + self.queued_prompt_tokens.load(Ordering::Relaxed),
        }
    }

    /// Sequences counted as queued (admitted, waiting for a slot).
    pub fn backlog_queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn costs(&self) -> Costs {
        Costs {
            slots: self.slots.load(Ordering::Relaxed),
            decode_step_s: self.decode_step_s.load(),
            prefill_token_s: self.prefill_token_s.load(),
            release_rate: self.release_rate.load(),
        }
    }

    pub fn completion_share(&self) -> f64 {
        self.completion_share.load()
    }

    /// The predicted wait of a request arriving now.
    pub fn predicted_wait_s(&self) -> f64 {
        predicted_wait_s(&self.backlog(), &self.costs())
    }

    /// Decides a request of `prompt_tokens` and `steps` expected decode steps arriving now
    /// (`decide` with `max_wait_s` and `spread`; no limit: admitted) and, if admitted,
    /// counts it as queued, in one step. `Ok((ticket, predicted wait))`, or
    /// `Err((predicted wait, retry_after_s))`.
    pub fn admit(
        self: &std::sync::Arc<Self>,
        prompt_tokens: u64,
        steps: u64,
        max_wait_s: Option<f64>,
        spread: f64,
    ) -> Result<(Ticket, f64), (f64, u64)> {
        let _one_at_a_time = self.deciding.lock().unwrap_or_else(|e| e.into_inner());
        let wait_s = self.predicted_wait_s();
        if let Some(max) = max_wait_s {
            if let Verdict::Refuse { retry_after_s } = decide(wait_s, max, spread) {
                return Err((wait_s, retry_after_s));
            }
        }
        Ok((self.enqueue_predicted(prompt_tokens, steps, wait_s), wait_s))
    }

    /// Counts a request of `prompt_tokens` and `steps` expected decode steps as queued until
    /// the returned ticket is dropped (when it gets a slot, or leaves the queue otherwise).
    pub fn enqueue(self: &std::sync::Arc<Self>, prompt_tokens: u64, steps: u64) -> Ticket {
        self.enqueue_predicted(prompt_tokens, steps, self.predicted_wait_s())
    }

    /// [`Gauge::enqueue`] for a request whose wait was predicted as `predicted_s`.
    pub fn enqueue_predicted(
        self: &std::sync::Arc<Self>,
        prompt_tokens: u64,
        steps: u64,
        predicted_s: f64,
    ) -> Ticket {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.queued_steps.fetch_add(steps, Ordering::Relaxed);
        self.queued_prompt_tokens
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        Ticket {
            gauge: self.clone(),
            prompt_tokens,
            steps,
            issued_at: std::time::Instant::now(),
            predicted_s,
        }
    }
}

/// A queued request's share of its engine's [`Gauge`], returned when dropped: whatever way a
/// request leaves the queue, the queued figures stay exact.
#[derive(Debug)]
pub struct Ticket {
    gauge: std::sync::Arc<Gauge>,
    prompt_tokens: u64,
    steps: u64,
    /// When the request was admitted, and the wait for a slot predicted then (the observed
    /// wait is measured from it).
    pub issued_at: std::time::Instant,
    pub predicted_s: f64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let g = &self.gauge;
        g.queued.fetch_sub(1, Ordering::Relaxed);
        g.queued_steps.fetch_sub(self.steps, Ordering::Relaxed);
        g.queued_prompt_tokens
            .fetch_sub(self.prompt_tokens, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const COSTS: Costs = Costs {
        slots: 4,
        decode_step_s: 0.010,
        prefill_token_s: 0.001,
        release_rate: 0.0,
    };

    #[test]
    fn a_free_slot_means_no_wait() {
        let b = Backlog {
            running: 2,
            running_steps: 1000,
            running_left: vec![400, 600],
            queued: 1,
            queued_steps: 500,
            prompt_tokens: 30,
        };
        assert_eq!(predicted_wait_s(&b, &COSTS), 0.0);
        assert_eq!(predicted_wait_s(&Backlog::default(), &COSTS), 0.0);
    }

    #[test]
    fn within_the_running_wave_the_wait_is_the_release_it_needs() {
        // 4 slots taken, with 3, 5, 9 and 12 steps left; one queued ahead: the new request
        // needs the second release (5 steps), plus the queued prompt.
        let b = Backlog {
            running: 4,
            running_steps: 29,
            running_left: vec![3, 5, 9, 12],
            queued: 1,
            queued_steps: 10,
            prompt_tokens: 20,
        };
        let want = 5.0 * 0.010 + 20.0 * 0.001;
        assert!((predicted_wait_s(&b, &COSTS) - want).abs() < 1e-12);
        // Same-length requests started together end together: a whole wave to wait.
        let wave = Backlog {
            running: 4,
            running_steps: 60,
            running_left: vec![15; 4],
            ..Backlog::default()
        };
        assert!((predicted_wait_s(&wave, &COSTS) - 15.0 * 0.010).abs() < 1e-12);
    }

    #[test]
    fn past_the_running_wave_queued_sequences_release_slots_per_their_steps() {
        // 4 running (longest 12 steps left), 12 queued of 9 decode steps (+1 prefill) each:
        // the new request needs release 13, i.e. 9 past the running ones: 9/4 waves of 10.
        let b = Backlog {
            running: 4,
            running_steps: 29,
            running_left: vec![3, 5, 9, 12],
            queued: 12,
            queued_steps: 12 * 9,
            prompt_tokens: 0,
        };
        let want = (12.0 + 9.0 / 4.0 * 10.0) * 0.010;
        assert!((predicted_wait_s(&b, &COSTS) - want).abs() < 1e-12);
    }

    #[test]
    fn past_the_running_wave_a_measured_release_rate_sets_the_wait() {
        let b = Backlog {
            running: 4,
            running_steps: 29,
            running_left: vec![3, 5, 9, 12],
            queued: 100,
            queued_steps: 900,
            prompt_tokens: 2000,
        };
        let measured = Costs {
            release_rate: 20.0,
            ..COSTS
        };
        // Release 101 at 20 a second.
        assert!((predicted_wait_s(&b, &measured) - 101.0 / 20.0).abs() < 1e-12);
        // Within the wave the steps still decide.
        let short = Backlog {
            queued: 1,
            ..b.clone()
        };
        assert!((predicted_wait_s(&short, &measured) - (5.0 * 0.010 + 2.0)).abs() < 1e-12);
    }

    #[test]
    fn the_release_rate_counts_busy_seconds_only() {
        let mut r = ReleaseRate::default();
        r.record(5.0, 100, false);
        assert_eq!(r.per_s(), 0.0, "idle time says nothing of capacity");
        r.record(1.0, 2, true);
        assert_eq!(
            r.per_s(),
            0.0,
            "a busy spell's first second is its burst's prefill"
        );
        for _ in 0..10 {
            r.record(0.1, 3, true);
        }
        assert!((r.per_s() - 30.0).abs() < 1e-9, "{}", r.per_s());
        for _ in 0..200 {
            r.record(0.1, 1, true);
        }
        assert!((r.per_s() - 10.0).abs() < 0.1, "{}", r.per_s());
    }

    #[test]
    fn the_wait_grows_with_the_queue_and_the_step_cost() {
        let mut last = 0.0;
        for queued in [0, 4, 16, 64, 256, 1024] {
            let b = Backlog {
                running: 4,
                running_steps: 4 * 15,
                running_left: vec![2, 6, 11, 15],
                queued,
                queued_steps: queued as u64 * 15,
                prompt_tokens: queued as u64 * 20,
            };
            let w = predicted_wait_s(&b, &COSTS);
            assert!(w > last, "{queued}: {w} after {last}");
            last = w;
            let slower = Costs {
                decode_step_s: 0.020,
                ..COSTS
            };
            assert!(predicted_wait_s(&b, &slower) > w);
        }
    }

    #[test]
    fn one_token_requests_wait_for_their_prefill_steps_and_tokens() {
        // Running ones with 1 step left (their prefill); 100 queued one-token requests: 97
        // releases past the running ones, 4 per step.
        let b = Backlog {
            running: 4,
            running_steps: 0,
            running_left: vec![1; 4],
            queued: 100,
            queued_steps: 0,
            prompt_tokens: 2000,
        };
        let want = (1.0 + 97.0 / 4.0) * 0.010 + 2.0;
        assert!((predicted_wait_s(&b, &COSTS) - want).abs() < 1e-9);
    }

    #[test]
    fn expected_steps_scale_max_tokens_by_the_measured_share() {
        assert_eq!(expected_steps(1, 1.0), 0);
        assert_eq!(expected_steps(16, 1.0), 15);
        assert_eq!(expected_steps(256, 0.2), 51);
        assert_eq!(expected_steps(256, 0.0), 0);
        assert_eq!(expected_steps(10, 7.0), 9, "the share is clamped");
    }

    #[test]
    fn refusals_say_when_the_wait_would_fit_spread_over_the_limit() {
        assert_eq!(decide(0.0, 0.0, 0.5), Verdict::Admit);
        assert_eq!(decide(4.9, 5.0, 0.5), Verdict::Admit);
        assert_eq!(decide(5.0, 5.0, 0.5), Verdict::Admit);
        assert_eq!(decide(5.01, 5.0, 0.0), Verdict::Refuse { retry_after_s: 1 });
        assert_eq!(decide(12.2, 5.0, 0.0), Verdict::Refuse { retry_after_s: 8 });
        assert_eq!(
            decide(12.2, 5.0, 1.0),
            Verdict::Refuse { retry_after_s: 13 }
        );
        assert_eq!(
            decide(12.2, 5.0, 0.5),
            Verdict::Refuse { retry_after_s: 10 }
        );
        assert_eq!(
            decide(1e9, 5.0, 0.0),
            Verdict::Refuse {
                retry_after_s: RETRY_AFTER_MAX_S
            }
        );
    }

    #[test]
    fn the_step_fit_splits_fixed_and_per_token_costs() {
        let mut f = StepFit::default();
        assert_eq!(f.coefficients(), (0.0, 0.0));
        f.record(20, 0.020);
        assert_eq!(f.coefficients(), (0.0, 0.001), "one size: all per token");
        for i in 0..400 {
            let tokens = [1, 8, 32, 300][i % 4];
            f.record(tokens, 0.010 + 0.0001 * tokens as f64);
        }
        let (fixed, per_token) = f.coefficients();
        assert!((fixed - 0.010).abs() < 1e-4, "{fixed}");
        assert!((per_token - 0.0001).abs() < 1e-6, "{per_token}");
        let c = f.costs(32);
        assert!((c.decode_step_s - (0.010 + 32.0 * 0.0001)).abs() < 1e-4);
        assert_eq!(c.slots, 32);
    }

    #[test]
    fn admission_counts_the_admitted_at_once() {
        let g = Arc::new(Gauge::new(4));
        g.publish(&Published {
            running: 4,
            running_steps: 40,
            running_left: vec![10; 4],
            costs: COSTS,
            completion_share: 1.0,
            ..Published::default()
        });
        // Each admission lengthens the queue the next one sees, until the limit refuses.
        let mut admitted = Vec::new();
        let refused = loop {
            match g.admit(0, 9, Some(0.5), 0.0) {
                Ok((t, wait_s)) => {
                    assert!(wait_s <= 0.5);
                    admitted.push(t);
                }
                Err((wait_s, retry_after_s)) => break (wait_s, retry_after_s),
            }
            assert!(admitted.len() < 100, "the queue never filled");
        };
        assert!(refused.0 > 0.5 && refused.1 >= 1, "{refused:?}");
        assert_eq!(g.backlog().queued, admitted.len());
        drop(admitted);
        assert_eq!(g.backlog().queued, 0);
        assert!(g.admit(0, 9, None, 0.0).is_ok(), "no limit: admitted");
    }

    #[test]
    fn tickets_return_what_they_took() {
        let g = Arc::new(Gauge::new(4));
        g.publish(&Published {
            running: 4,
            running_steps: 40,
            running_left: vec![10; 4],
            running_prompt_tokens: 5,
            costs: COSTS,
            completion_share: 0.5,
            mean_prompt_tokens: 20,
        });
        let a = g.enqueue(20, 7);
        let b = g.enqueue(30, 3);
        assert_eq!(
            g.backlog(),
            Backlog {
                running: 4,
                running_steps: 40,
                running_left: vec![10; 4],
                queued: 2,
                queued_steps: 10,
                prompt_tokens: 55,
            }
        );
        let with_two = g.predicted_wait_s();
        drop(a);
        assert!(g.predicted_wait_s() < with_two);
        drop(b);
        let b = g.backlog();
        assert_eq!((b.queued, b.queued_steps, b.prompt_tokens), (0, 0, 5));
        assert_eq!(g.completion_share(), 0.5);
        assert_eq!(g.mean_prompt_tokens(), 20);
        assert_eq!(g.costs(), COSTS);
    }
}
