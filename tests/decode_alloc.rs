//! A decode step allocates nothing on the heap: scratch buffers and the KV cache are sized at
//! load. A counting global allocator sees every allocation of every thread in this test binary
//! (which holds this one test only, so nothing else runs beside it).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ryzanstein::model::{BatchToken, Model, ModelOptions};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocations made by 32 decode steps of two sequences (after a prefill and warm-up).
/// Everything runs inside one `install`: each `install` from outside the pool pushes a job onto
/// rayon's global queue, which allocates a new block every few dozen pushes — a cost of the
/// caller entering the pool, not of the forward pass.
fn decode_allocations(model: &Model, pool: &rayon::ThreadPool) -> usize {
    let mut state = model.new_state();
    let prompt: Vec<BatchToken> = (0..8)
        .map(|pos| BatchToken {
            token: 2 + pos as u32 * 7,
            pos,
            seq: 0,
            logits: pos == 7,
        })
        .collect();
    let step = |pos: usize| {
        [
            BatchToken {
                token: 100,
                pos,
                seq: 0,
                logits: true,
            },
            BatchToken {
                token: 200,
                pos: pos - 8,
                seq: 1,
                logits: true,
            },
        ]
    };
    pool.install(|| {
        model.forward(&mut state, &prompt).unwrap();
        // Warm-up: the first steps may let rayon and the thread-locals settle.
        for pos in 8..12 {
            model.forward(&mut state, &step(pos)).unwrap();
        }
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for pos in 12..44 {
            model.forward(&mut state, &step(pos)).unwrap();
        }
        ALLOCATIONS.load(Ordering::SeqCst) - before
    })
}

#[test]
fn decode_steps_allocate_nothing() {
    let opts = ModelOptions {
        n_ctx: 128,
        n_seq: 2,
        max_batch_tokens: 16,
        max_logit_rows: 2,
    };
    // One pool for every model: a dropped pool's threads wind down (and may allocate) in the
    // background, which a later measurement would count.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let model = Model::load(&common::default_model_path(), opts).unwrap();
    let allocations = decode_allocations(&model, &pool);
    assert_eq!(
        allocations, 0,
        "32 decode steps made {allocations} heap allocations"
    );
    // The other architectures' paths too: biases, SiLU, rope_freqs, q/k norms.
    for stem in ["tiny-llama", "qwen2-q4_k", "qwen3-q4_k"] {
        let path = common::fixtures_dir().join(format!("{stem}.gguf"));
        let model = Model::load(&path, opts).unwrap();
        let allocations = decode_allocations(&model, &pool);
        assert_eq!(
            allocations, 0,
            "{stem}: 32 decode steps made {allocations} heap allocations"
        );
    }
}
