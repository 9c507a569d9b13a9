//! The compute team: a forward pass runs on every thread of the rayon pool at once, and its
//! parallel loops ([`for_each`]) are handed out by a leader to followers that spin between
//! loops instead of going idle.
//!
//! Why not plain rayon inside the forward pass: a pass has a few hundred parallel loops
//! (matmuls, norms, attention), and between two of them rayon's idle workers call
//! `sched_yield`. When any other thread is runnable on that core — a model loading at
//! `SCHED_IDLE`, a build, another process — the yield hands it the core until the next
//! scheduler tick, and the loop that follows runs on one core. Measured on 2 cores: decode
//! lost about 30% beside a `chrt -i 0` busy loop, while llama.cpp's spinning threads lost
//! nothing. In a team the followers spin (`spin_loop`, no yield) for the whole pass, so a
//! neighbour at low priority only gets what the pass leaves idle.
//!
//! How: [`run`] broadcasts one job to the pool's threads; thread 0 becomes the leader and runs
//! the pass, the others follow. A loop is published under a sequence lock (a generation number
//! that is odd while the loop is written); tasks are claimed in shrinking shares with a
//! compare-and-swap on a word holding (generation, next task), so a follower that read a stale
//! loop can never claim a task of the next one; the leader claims tasks too and returns once
//! every task is done. Results never depend on which thread ran a task: every task writes its
//! own outputs.
//! Outside a team (tests, tools that call the model directly) [`for_each`] is plain rayon,
//! and `RYZANSTEIN_NO_TEAM=1` makes [`run`] plain rayon too, to compare.
//!
//! Runs are serialised process-wide: two models sharing the pool would otherwise each hold
//! some of its threads spinning for a leader that waits behind the other's job.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

/// Spins of a follower waiting for the next loop after which it yields once, and again every
/// as many (a leader this slow is doing long serial work, or has lost its core).
const SPINS_BEFORE_YIELD: u32 = 1 << 16;

/// A parallel loop body, type-erased.
type Body<'a> = &'a (dyn Fn(usize) + Sync);

/// A value alone on its cache line(s), so the followers' spinning reads of one word do not
/// contend with the claims and completions written to another.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The state the leader and followers share during one [`run`].
struct Team {
    /// Threads in the team (leader included).
    size: usize,
    /// Sequence lock: odd while the leader writes a loop, even (and new) once it is posted.
    seq: Padded<AtomicU64>,
    /// The posted loop: a pointer to a `Body` on the leader's stack, and its task count.
    body: AtomicPtr<()>,
    n_tasks: AtomicUsize,
    /// (generation << 32) | index of the next unclaimed task of the posted loop.
    claim: Padded<AtomicU64>,
    /// Tasks of the posted loop finished (by anyone).
    done: Padded<AtomicUsize>,
    /// Set when the pass is over: followers return.
    exit: AtomicBool,
    /// The first panic of a follower's task, re-raised on the leader.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

thread_local! {
    /// The team this thread leads, while it runs a pass.
    static LEADING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// One forward pass at a time in the whole process (see the module comment).
static RUNS: Mutex<()> = Mutex::new(());

/// Runs `f` as the leader of a team made of every thread of `pool` (see the module comment)
/// and returns its result; a panic in `f` or in any task is resumed here.
pub fn run<R: Send>(pool: &rayon::ThreadPool, f: impl FnOnce() -> R + Send) -> R {
    if pool.current_num_threads() < 2 || !enabled() {
        return pool.install(f);
    }
    let _one_at_a_time = RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let team = Team {
        size: pool.current_num_threads(),
        seq: Padded(AtomicU64::new(0)),
        body: AtomicPtr::new(std::ptr::null_mut()),
        n_tasks: AtomicUsize::new(0),
        claim: Padded(AtomicU64::new(0)),
        done: Padded(AtomicUsize::new(0)),
        exit: AtomicBool::new(false),
        panic: Mutex::new(None),
    };
    let f = Mutex::new(Some(f));
    let out = Mutex::new(None);
    pool.broadcast(|ctx| {
        if ctx.index() != 0 {
            team.follow();
            return;
        }
        let f = f.lock().unwrap_or_else(|e| e.into_inner()).take();
        let f = f.expect("one leader");
        LEADING.with(|l| l.set(&team));
        let r = catch_unwind(AssertUnwindSafe(f));
        LEADING.with(|l| l.set(std::ptr::null()));
        team.exit.store(true, Ordering::Release);
        *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    });
    let r = out.into_inner().unwrap_or_else(|e| e.into_inner());
    match r.expect("the leader ran") {
        Ok(v) => v,
        Err(p) => resume_unwind(p),
    }
}

/// False when `RYZANSTEIN_NO_TEAM=1` (read once): passes then run on plain rayon, to compare.
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !std::env::var("RYZANSTEIN_NO_TEAM").is_ok_and(|v| v == "1"))
}

/// Calls `f(i)` for every `i` in `0..n`, in parallel: on the team if this thread leads one,
/// else on the current rayon pool. `f` must not depend on which thread runs it.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    let team = LEADING.with(|l| l.get());
    if team.is_null() {
        (0..n).into_par_iter().for_each(&f);
        return;
    }
    // SAFETY: LEADING is set only by `run`, to a team that outlives the leader's call of `f`,
    // inside which this runs (and cleared before `run` returns).
    let team = unsafe { &*team };
    team.lead(n, &f);
}

/// Calls `f(i, chunk)` for every `chunk_len`-long piece of `data` (the last may be shorter),
/// in parallel as [`for_each`] does.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(chunk_len > 0, "chunks of at least one element");
    let len = data.len();
    let ptr = SendPtr(data.as_mut_ptr());
    for_each(len.div_ceil(chunk_len), |i| {
        let start = i * chunk_len;
        let n = chunk_len.min(len - start);
        // SAFETY: task i alone gets elements start..start+n (disjoint across i, in bounds
        // of `data`, which is borrowed mutably for the whole call).
        let chunk = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(start), n) };
        f(i, chunk)
    });
}

/// Like [`for_each_chunk_mut`] over two slices cut into the same number of chunks (of
/// `len_a` and `len_b` elements): `f(i, chunk i of a, chunk i of b)`.
pub fn for_each_chunk_mut2<T: Send, U: Send>(
    a: &mut [T],
    len_a: usize,
    b: &mut [U],
    len_b: usize,
    f: impl Fn(usize, &mut [T], &mut [U]) + Sync,
) {
    assert!(len_a > 0 && len_b > 0, "chunks of at least one element");
    let n = a.len().div_ceil(len_a);
    assert_eq!(n, b.len().div_ceil(len_b), "as many chunks in both slices");
    let (pa, pb) = (SendPtr(a.as_mut_ptr()), SendPtr(b.as_mut_ptr()));
    let (all_a, all_b) = (a.len(), b.len());
    for_each(n, |i| {
        let (sa, sb) = (i * len_a, i * len_b);
        // SAFETY: as in `for_each_chunk_mut`, for each slice.
        let (ca, cb) = unsafe {
            (
                std::slice::from_raw_parts_mut(pa.get().add(sa), len_a.min(all_a - sa)),
                std::slice::from_raw_parts_mut(pb.get().add(sb), len_b.min(all_b - sb)),
            )
        };
        f(i, ca, cb)
    });
}

/// A raw pointer the tasks share; each task touches only its own elements.
struct SendPtr<T>(*mut T);

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `SendPtr`, which is `Sync`).
    fn get(&self) -> *mut T {
        self.0
    }
}

// SAFETY: the pointer is only used for disjoint accesses, one task per element range.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl Team {
    /// Leader: posts a loop of `n` tasks, runs tasks until none is left, waits for the
    /// followers' last ones, and re-raises a follower's panic.
    fn lead(&self, n: usize, f: Body<'_>) {
        if n == 0 {
            return;
        }
        if n == 1 {
            f(0);
            return;
        }
        let seq = self.seq.load(Ordering::Relaxed);
        let gen = seq / 2 + 1;
        self.seq.store(seq + 1, Ordering::Relaxed); // odd: being written
        fence(Ordering::Release);
        let body: *const Body<'_> = &f;
        self.body.store(body as *mut (), Ordering::Relaxed);
        self.n_tasks.store(n, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.claim.store(gen << 32, Ordering::Relaxed);
        self.seq.store(seq + 2, Ordering::Release); // even: posted

        // A panic is held until the followers are done: they use `f` and the data it
        // borrows, which unwinding past this frame would free.
        let mut mine = 0;
        while let Some(tasks) = self.claim_tasks(gen, n) {
            mine += tasks.len();
            tasks.for_each(|i| self.run_task(f, i));
        }
        self.done.fetch_add(mine, Ordering::AcqRel);
        while self.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
        if let Some(p) = self.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(p);
        }
    }

    /// Runs task `i`, keeping its panic (the first of the loop) for the leader to re-raise.
    fn run_task(&self, f: Body<'_>, i: usize) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
            let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(p);
        }
    }

    /// Claims the next tasks of loop `gen` (of `n` tasks), if any is left: a share of what
    /// remains (guided scheduling: large claims first, single tasks at the end), so a loop of
    /// thousands of small tasks costs a few dozen contended claims, not thousands.
    fn claim_tasks(&self, gen: u64, n: usize) -> Option<std::ops::Range<usize>> {
        let mut w = self.claim.load(Ordering::Relaxed);
        loop {
            let i = (w & 0xFFFF_FFFF) as usize;
            if w >> 32 != gen & 0xFFFF_FFFF || i >= n {
                return None;
            }
            let k = ((n - i) / (2 * self.size)).max(1);
            match self.claim.compare_exchange_weak(
                w,
                w + k as u64,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(i..i + k),
                Err(now) => w = now,
            }
        }
    }

    /// Follower: until the pass is over, waits (spinning) for each new loop and helps run it.
    fn follow(&self) {
        let mut seen = 0u64;
        loop {
            let Some((seq, body, n)) = self.next_loop(seen) else {
                return;
            };
            seen = seq;
            let gen = seq / 2;
            let mut mine = 0;
            while let Some(tasks) = self.claim_tasks(gen, n) {
                // SAFETY: tasks of loop `gen` were claimed, so the leader is still inside
                // `lead` for that loop (it returns only after they are counted done), and
                // the `Body` it posted lives on its stack until then.
                let f: Body<'_> = unsafe { *(body as *const Body<'_>) };
                mine += tasks.len();
                tasks.for_each(|i| self.run_task(f, i));
            }
            self.done.fetch_add(mine, Ordering::AcqRel);
        }
    }

    /// Spins until a loop newer than `seen` is posted (returns its sequence number, body and
    /// task count, read consistently) or the pass is over (`None`).
    fn next_loop(&self, seen: u64) -> Option<(u64, *mut (), usize)> {
        let mut spins = 0u32;
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 != seen && s1.is_multiple_of(2) {
                let body = self.body.load(Ordering::Relaxed);
                let n = self.n_tasks.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return Some((s1, body, n));
                }
            }
            if self.exit.load(Ordering::Acquire) {
                return None;
            }
            std::hint::spin_loop();
            spins += 1;
            if spins == SPINS_BEFORE_YIELD {
                spins = 0;
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn pool(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .expect("pool")
    }

    #[test]
    fn every_task_runs_once_in_every_loop() {
        for threads in [1, 2, 4] {
            let p = pool(threads);
            let counts: Vec<AtomicU32> = (0..1000).map(|_| AtomicU32::new(0)).collect();
            let total = run(&p, || {
                for n in [0, 1, 2, 7, 64, 1000] {
                    for_each(n, |i| {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
                42
            });
            assert_eq!(total, 42);
            for (i, c) in counts.iter().enumerate() {
                let want = [1, 2, 7, 64, 1000].iter().filter(|&&n| i < n).count() as u32;
                assert_eq!(
                    c.load(Ordering::Relaxed),
                    want,
                    "task {i}, {threads} threads"
                );
            }
        }
    }

    #[test]
    fn chunks_cover_the_slices() {
        let p = pool(2);
        let mut a = vec![0u32; 103];
        let mut b = vec![0u64; 2 * 11];
        run(&p, || {
            for_each_chunk_mut(&mut a, 10, |i, c| c.iter_mut().for_each(|v| *v += i as u32));
            for_each_chunk_mut2(&mut a, 10, &mut b, 2, |i, ca, cb| {
                cb[0] = ca.len() as u64;
                cb[1] = i as u64;
            });
        });
        assert!(a.iter().enumerate().all(|(k, &v)| v == (k / 10) as u32));
        assert_eq!(b[20..], [3, 10]);
        assert_eq!(b[0..2], [10, 0]);
    }

    #[test]
    fn a_panic_in_a_task_reaches_the_caller_and_the_pool_lives_on() {
        let p = pool(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            run(&p, || for_each(64, |i| assert!(i != 37, "task 37 fails")))
        }));
        assert!(r.is_err());
        assert_eq!(run(&p, || 5), 5);
        let sum = AtomicUsize::new(0);
        run(&p, || {
            for_each(10, |i| {
                sum.fetch_add(i, Ordering::Relaxed);
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }
}
