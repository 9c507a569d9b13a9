//! The batching policy: which tokens of which sequences go into the next forward pass.
//!
//! A pure function of the running sequences and the budgets, so it can be unit-tested and
//! benchmarked alone. Every running sequence with one token pending (a decode step) gets it;
//! the remaining token budget goes to pending prompt tokens (prefill), oldest sequence first,
//! in chunks. While anything is decoding, prefill is capped at `prefill_tokens_while_decoding`
//! so a long prompt cannot stall the streams that are already running — except for short
//! prompts (at most `whole_prompt_tokens` left), which are taken whole even past that cap: one
//! per step, plus every short prompt that has already waited a step. A burst of new requests
//! thus gets its first tokens within two steps instead of queueing behind the cap one by one;
//! the running streams pay for it with one longer step, once per burst.

/// What the policy needs to know of one running sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqView {
    /// Tokens not yet in the KV cache (prompt left to prefill, or 1 for a decode step).
    pub pending: usize,
    /// The sequence has produced tokens and is generating (not prefilling).
    pub decoding: bool,
    /// The sequence was already prefilling when an earlier step was planned (it has waited).
    pub overdue: bool,
}

/// Limits of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budgets {
    /// Most tokens in one forward pass.
    pub max_batch_tokens: usize,
    /// Most prompt tokens in a step that also carries decode tokens.
    pub prefill_tokens_while_decoding: usize,
    /// A prompt with at most this many tokens left may be taken whole past the cap above:
    /// one per step, and every one that is overdue.
    pub whole_prompt_tokens: usize,
}

/// One entry of a step: `n_tokens` pending tokens of sequence `seq` (an index into the views).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    pub seq: usize,
    pub n_tokens: usize,
}

/// Fills `out` with the next step's slices, decode steps first, then prefill chunks in the
/// order of `seqs` (which the dispatcher keeps in admission order). Returns the token count.
pub fn next_batch(seqs: &[SeqView], b: &Budgets, out: &mut Vec<Slice>) -> usize {
    out.clear();
    let mut used = 0;
    for (i, s) in seqs.iter().enumerate() {
        if s.decoding && s.pending > 0 && used < b.max_batch_tokens {
            out.push(Slice {
                seq: i,
                n_tokens: 1,
            });
            used += 1;
        }
    }
    let room = b.max_batch_tokens - used;
    let mut prefill_cap = if used > 0 {
        b.prefill_tokens_while_decoding.min(room)
    } else {
        room
    };
    let mut prefill = 0;
    let mut whole_taken = false;
    for (i, s) in seqs.iter().enumerate() {
        if s.decoding || s.pending == 0 {
            continue;
        }
        let short = s.pending <= b.whole_prompt_tokens.min(room - prefill);
        if short && s.pending > prefill_cap - prefill && (s.overdue || !whole_taken) {
            // A short prompt goes in whole; the cap grows by what it took past it.
            whole_taken |= !s.overdue;
            prefill_cap = prefill + s.pending;
        }
        let n = s.pending.min(prefill_cap - prefill);
        if n == 0 {
            // The cap is spent, but a short prompt further back may still go in whole.
            continue;
        }
        out.push(Slice {
            seq: i,
            n_tokens: n,
        });
        prefill += n;
    }
    used + prefill
}

/// The prefill cap that keeps a step within `itl_factor` times a decode-only step, from the
/// measured cost of a decode-only step and of one prefill token (both in seconds). At least
/// `floor` tokens, so prompts always make progress.
pub fn prefill_cap(
    decode_step_s: f64,
    prefill_token_s: f64,
    itl_factor: f64,
    floor: usize,
) -> usize {
    if prefill_token_s <= 0.0 || decode_step_s <= 0.0 {
        return floor;
    }
    let spare_s = decode_step_s * (itl_factor - 1.0);
    ((spare_s / prefill_token_s) as usize).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn dec() -> SeqView {
        SeqView {
            pending: 1,
            decoding: true,
            overdue: false,
        }
    }

    const fn pre(n: usize) -> SeqView {
        SeqView {
            pending: n,
            decoding: false,
            overdue: false,
        }
    }

    /// A prompt that has waited a step already.
    const fn late(n: usize) -> SeqView {
        SeqView {
            pending: n,
            decoding: false,
            overdue: true,
        }
    }

    fn plan(seqs: &[SeqView], max: usize, cap: usize) -> Vec<(usize, usize)> {
        plan_whole(seqs, max, cap, 0)
    }

    fn plan_whole(seqs: &[SeqView], max: usize, cap: usize, whole: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let b = Budgets {
            max_batch_tokens: max,
            prefill_tokens_while_decoding: cap,
            whole_prompt_tokens: whole,
        };
        let n = next_batch(seqs, &b, &mut out);
        assert_eq!(n, out.iter().map(|s| s.n_tokens).sum::<usize>());
        assert!(n <= max);
        out.iter().map(|s| (s.seq, s.n_tokens)).collect()
    }

    #[test]
    fn decodes_come_first_then_prefill_in_order() {
        let seqs = [pre(10), dec(), pre(5), dec()];
        assert_eq!(plan(&seqs, 100, 100), [(1, 1), (3, 1), (0, 10), (2, 5)]);
    }

    #[test]
    fn a_long_prompt_is_chunked_by_the_token_budget() {
        assert_eq!(plan(&[pre(2000)], 512, 16), [(0, 512)]);
        assert_eq!(plan(&[pre(2000), pre(3)], 512, 16), [(0, 512)]);
        assert_eq!(plan(&[pre(500), pre(30)], 512, 16), [(0, 500), (1, 12)]);
    }

    #[test]
    fn prefill_is_capped_while_streams_decode() {
        assert_eq!(
            plan(&[dec(), pre(2000), dec()], 512, 16),
            [(0, 1), (2, 1), (1, 16)]
        );
    }

    #[test]
    fn one_short_prompt_per_step_goes_in_whole() {
        let seqs = [dec(), pre(20), pre(20), dec()];
        assert_eq!(plan_whole(&seqs, 512, 4, 64), [(0, 1), (3, 1), (1, 20)]);
        // A long prompt is still capped, and the short one behind it may go in whole.
        let seqs = [dec(), pre(2000), pre(10)];
        assert_eq!(plan_whole(&seqs, 512, 4, 64), [(0, 1), (1, 4), (2, 10)]);
        let seqs = [dec(), pre(3), pre(30)];
        assert_eq!(plan_whole(&seqs, 512, 4, 64), [(0, 1), (1, 3), (2, 30)]);
        // Never past the token budget.
        assert_eq!(plan_whole(&[dec(), pre(20)], 8, 4, 64), [(0, 1), (1, 4)]);
    }

    #[test]
    fn every_overdue_short_prompt_goes_in_whole() {
        // A burst: one new prompt per step, but all that have waited a step go in together.
        let seqs = [dec(), late(20), late(20), late(20), pre(20), pre(20)];
        assert_eq!(
            plan_whole(&seqs, 512, 4, 64),
            [(0, 1), (1, 20), (2, 20), (3, 20), (4, 20)]
        );
        // A long prompt ahead keeps its capped chunk; overdue short ones still go in.
        let seqs = [dec(), late(2000), late(20), late(30)];
        assert_eq!(
            plan_whole(&seqs, 512, 4, 64),
            [(0, 1), (1, 4), (2, 20), (3, 30)]
        );
        // An overdue long prompt is not short: it stays capped.
        assert_eq!(plan_whole(&[dec(), late(65)], 512, 4, 64), [(0, 1), (1, 4)]);
        // Never past the token budget: what does not fit whole waits for the next step.
        let seqs = [dec(), late(20), late(20), late(20)];
        assert_eq!(plan_whole(&seqs, 50, 4, 64), [(0, 1), (1, 20), (2, 20)]);
    }

    #[test]
    fn decodes_beyond_the_token_budget_wait() {
        let seqs = [dec(), dec(), dec(), pre(4)];
        assert_eq!(plan(&seqs, 2, 8), [(0, 1), (1, 1)]);
    }

    #[test]
    fn finished_or_empty_sequences_get_nothing() {
        let seqs = [
            SeqView {
                pending: 0,
                decoding: true,
                overdue: false,
            },
            pre(0),
        ];
        assert_eq!(plan(&seqs, 8, 8), []);
    }

    #[test]
    fn prefill_cap_follows_measured_costs() {
        // 20 ms decode step, 4 ms per prompt token, 3x allowed: 40 ms spare = 10 tokens.
        assert_eq!(prefill_cap(0.020, 0.004, 3.0, 4), 10);
        assert_eq!(prefill_cap(0.020, 0.004, 1.0, 4), 4);
        assert_eq!(prefill_cap(0.0, 0.004, 3.0, 4), 4);
    }
}
