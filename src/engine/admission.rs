//! Admission by expected wait: how long a request arriving now would wait for a slot, from
//! the work ahead of it and the measured step costs of its model, and whether that fits.
//!
//! Pure functions of a [`Backlog`] snapshot and [`Costs`], so they can be unit-tested and
//! benchmarked alone; [`super::dispatcher`] keeps the snapshot current ([`Gauge`]) and the
//! server asks it before it queues a request.
//!
//! The model is a fluid one. A sequence takes a slot for its prompt's prefill and then one
//! decode step per token after the first. With `slots` sequences decoding side by side, a
//! decode step of the full batch (`decode_step_s`) retires `slots` sequence-steps, and every
//! prompt token ahead costs `prefill_token_s` of the engine's time. A request arriving now
//! gets a slot at once if one is free; otherwise when `ahead - slots + 1` of the sequences
//! ahead of it have finished. With FIFO admission and similar requests, that is that share
//! of the decode work ahead spread over the slots, plus the prefill of every prompt ahead.
//! A sequence's decode steps are not known in advance: `max_tokens` bounds them, and the
//! share of it that finished sequences actually used (`completion_share`, measured) scales
//! the bound.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The work ahead of a request arriving now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Backlog {
    /// Sequences holding a slot (or preempted, to resume first).
    pub running: usize,
    /// Their expected decode steps left, summed.
    pub running_steps: u64,
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
    /// Seconds of a decode step (moving average over decode-only steps).
    pub decode_step_s: f64,
    /// Seconds per prompt token (moving average, net of the decode part of mixed steps).
    pub prefill_token_s: f64,
}

/// The predicted wait for a slot, in seconds, of a request arriving now.
pub fn predicted_wait_s(b: &Backlog, c: &Costs) -> f64 {
    let slots = c.slots.max(1);
    let prefill_s = b.prompt_tokens as f64 * c.prefill_token_s;
    let ahead = b.running + b.queued;
    if ahead < slots {
        return prefill_s;
    }
    let must_finish = (ahead - slots + 1) as f64;
    let steps_ahead = (b.running_steps + b.queued_steps) as f64;
    let decode_s = must_finish / ahead as f64 * steps_ahead / slots as f64 * c.decode_step_s;
    prefill_s + decode_s
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

/// Admits a request whose predicted wait fits `max_wait_s`; refuses it otherwise, with the
/// seconds after which it would fit (at least 1, at most [`RETRY_AFTER_MAX_S`]).
pub fn decide(predicted_wait_s: f64, max_wait_s: f64) -> Verdict {
    if predicted_wait_s <= max_wait_s {
        return Verdict::Admit;
    }
    let excess_s = (predicted_wait_s - max_wait_s).ceil();
    Verdict::Refuse {
        retry_after_s: (excess_s as u64).clamp(1, RETRY_AFTER_MAX_S),
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
    mean_prompt_tokens: AtomicU64,
    /// Observed over predicted waits (moving average): scales the prediction.
    calibration: AtomicF64,
    decode_step_s: AtomicF64,
    prefill_token_s: AtomicF64,
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
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Published {
    pub running: usize,
    pub running_steps: u64,
    pub running_prompt_tokens: u64,
    pub costs: Costs,
    pub completion_share: f64,
    /// Moving average of the prompt tokens of admitted requests (for requests counted before
    /// they are tokenized).
    pub mean_prompt_tokens: u64,
    /// Moving average of observed over predicted waits ([`calibrate`]).
    pub calibration: f64,
}

impl Gauge {
    /// A gauge for an engine of `slots` slots, with nothing measured yet (every request is
    /// expected to use its whole `max_tokens`).
    pub fn new(slots: usize) -> Gauge {
        let g = Gauge::default();
        g.slots.store(slots, Ordering::Relaxed);
        g.completion_share.store(1.0);
        g.calibration.store(1.0);
        g
    }

    pub fn publish(&self, p: &Published) {
        self.running.store(p.running, Ordering::Relaxed);
        self.running_steps.store(p.running_steps, Ordering::Relaxed);
        self.running_prompt_tokens
            .store(p.running_prompt_tokens, Ordering::Relaxed);
        self.slots.store(p.costs.slots, Ordering::Relaxed);
        self.decode_step_s.store(p.costs.decode_step_s);
        self.prefill_token_s.store(p.costs.prefill_token_s);
        self.completion_share.store(p.completion_share);
        self.mean_prompt_tokens
            .store(p.mean_prompt_tokens, Ordering::Relaxed);
        self.calibration.store(p.calibration);
    }

    pub fn mean_prompt_tokens(&self) -> u64 {
        self.mean_prompt_tokens.load(Ordering::Relaxed)
    }

    pub fn backlog(&self) -> Backlog {
        Backlog {
            running: self.running.load(Ordering::Relaxed),
            running_steps: self.running_steps.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            queued_steps: self.queued_steps.load(Ordering::Relaxed),
            prompt_tokens: self.running_prompt_tokens.load(Ordering::Relaxed)
                + self.queued_prompt_tokens.load(Ordering::Relaxed),
        }
    }

    pub fn costs(&self) -> Costs {
        Costs {
            slots: self.slots.load(Ordering::Relaxed),
            decode_step_s: self.decode_step_s.load(),
            prefill_token_s: self.prefill_token_s.load(),
        }
    }

    pub fn completion_share(&self) -> f64 {
        self.completion_share.load()
    }

    /// The predicted wait of a request arriving now, calibrated by the waits observed.
    pub fn predicted_wait_s(&self) -> f64 {
        predicted_wait_s(&self.backlog(), &self.costs()) * self.calibration.load()
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
    /// When the request was admitted, and the wait for a slot predicted then.
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

/// Predictions shorter than this are not used to calibrate: their ratios are noise.
pub const CALIBRATION_MIN_S: f64 = 0.05;
/// The correction stays within these factors: a prediction off by more is a bug to fix, not
/// to hide.
pub const CALIBRATION_RANGE: (f64, f64) = (0.5, 4.0);
const CALIBRATION_ALPHA: f64 = 0.05;

/// The calibration after a request predicted to wait `predicted_s` (uncalibrated, i.e.
/// divided by the calibration in force then) waited `observed_s`. The fluid model's step
/// costs come from steps of every mix; this carries the rest (batches that are not full,
/// prompts longer than the mean, steps slowed by the HTTP threads).
pub fn calibrate(calibration: f64, raw_predicted_s: f64, observed_s: f64) -> f64 {
    if raw_predicted_s < CALIBRATION_MIN_S {
        return calibration;
    }
    let ratio = (observed_s / raw_predicted_s).clamp(CALIBRATION_RANGE.0, CALIBRATION_RANGE.1);
    calibration + CALIBRATION_ALPHA * (ratio - calibration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const COSTS: Costs = Costs {
        slots: 4,
        decode_step_s: 0.010,
        prefill_token_s: 0.001,
    };

    #[test]
    fn a_free_slot_waits_only_for_the_prefill_ahead() {
        let b = Backlog {
            running: 2,
            running_steps: 1000,
            queued: 1,
            queued_steps: 500,
            prompt_tokens: 30,
        };
        assert!((predicted_wait_s(&b, &COSTS) - 0.030).abs() < 1e-12);
        assert_eq!(predicted_wait_s(&Backlog::default(), &COSTS), 0.0);
    }

    #[test]
    fn with_every_slot_taken_the_wait_is_the_share_of_decode_work_that_must_finish() {
        // 4 running, 4 queued, 10 steps each: the new one needs 5 of the 8 to finish.
        let b = Backlog {
            running: 4,
            running_steps: 40,
            queued: 4,
            queued_steps: 40,
            prompt_tokens: 0,
        };
        let want = 5.0 / 8.0 * 80.0 / 4.0 * 0.010;
        assert!((predicted_wait_s(&b, &COSTS) - want).abs() < 1e-12);
        // One slot's worth: exactly one wave of 10 steps less the overlap.
        let full = Backlog {
            running: 4,
            running_steps: 40,
            ..Backlog::default()
        };
        assert!((predicted_wait_s(&full, &COSTS) - 1.0 / 4.0 * 40.0 / 4.0 * 0.010).abs() < 1e-12);
    }

    #[test]
    fn the_wait_grows_with_the_queue_and_the_step_cost() {
        let mut last = 0.0;
        for queued in [0, 4, 16, 64, 256, 1024] {
            let b = Backlog {
                running: 4,
                running_steps: 4 * 15,
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
    fn one_token_requests_wait_for_prefill_alone() {
        let b = Backlog {
            running: 4,
            running_steps: 0,
            queued: 100,
            queued_steps: 0,
            prompt_tokens: 2000,
        };
        assert!((predicted_wait_s(&b, &COSTS) - 2.0).abs() < 1e-9);
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
    fn refusals_say_when_the_wait_would_fit() {
        assert_eq!(decide(0.0, 0.0), Verdict::Admit);
        assert_eq!(decide(4.9, 5.0), Verdict::Admit);
        assert_eq!(decide(5.0, 5.0), Verdict::Admit);
        assert_eq!(decide(5.01, 5.0), Verdict::Refuse { retry_after_s: 1 });
        assert_eq!(decide(12.2, 5.0), Verdict::Refuse { retry_after_s: 8 });
        assert_eq!(
            decide(1e9, 5.0),
            Verdict::Refuse {
                retry_after_s: RETRY_AFTER_MAX_S
            }
        );
    }

    #[test]
    fn calibration_follows_observed_waits_within_bounds() {
        let mut c = 1.0;
        for _ in 0..200 {
            c = calibrate(c, 1.0, 2.0);
        }
        assert!((c - 2.0).abs() < 0.01, "{c}");
        for _ in 0..200 {
            c = calibrate(c, 1.0, 100.0);
        }
        assert!((c - CALIBRATION_RANGE.1).abs() < 0.01, "{c}");
        assert_eq!(calibrate(c, 0.01, 5.0), c, "short predictions are noise");
    }

    #[test]
    fn tickets_return_what_they_took() {
        let g = Arc::new(Gauge::new(4));
        g.publish(&Published {
            running: 4,
            running_steps: 40,
            running_prompt_tokens: 5,
            costs: COSTS,
            completion_share: 0.5,
            mean_prompt_tokens: 20,
            calibration: 1.0,
        });
        let a = g.enqueue(20, 7);
        let b = g.enqueue(30, 3);
        assert_eq!(
            g.backlog(),
            Backlog {
                running: 4,
                running_steps: 40,
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
