//! The model registry on tiny models, without HTTP: single-flight loads, the LRU cache bounded
//! by count and by bytes, what is never evicted (leases, pins, dependencies), waiting or
//! failing when full, unloads, dependencies loading first, failures with their reason, and
//! progress events in order.

mod common;
mod models_support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use models_support::*;
use ryzanstein::engine::{
    AcquireError, AdminError, Catalog, EngineOptions, ModelState, Phase, Registry, RegistryOptions,
    WhenFull,
};

const WAIT: Duration = Duration::from_secs(30);
/// Pad of each tiny model: 1 Mi f32 = 4 MiB, so a model holds about 4 MiB.
const PAD: usize = 1 << 20;

fn options() -> RegistryOptions {
    RegistryOptions {
        engine: EngineOptions {
            n_ctx: TINY_CTX,
            max_batch_size: 2,
            max_batch_tokens: 32,
            queue_depth: 8,
            ..EngineOptions::default()
        },
        loader_threads: 2,
        max_concurrent_loads: 1,
        ..RegistryOptions::default()
    }
}

fn pool() -> Arc<rayon::ThreadPool> {
    Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool"),
    )
}

/// A directory with tiny models `names` and the given manifest (may be empty).
fn dir(names: &[&str], manifest: &str) -> TempDir {
    let d = TempDir::new("reg");
    let bytes = tiny_model_bytes(PAD);
    for n in names {
        d.write(&format!("{n}.gguf"), &bytes);
    }
    if !manifest.is_empty() {
        d.manifest(manifest);
    }
    d
}

fn start(d: &TempDir, opts: RegistryOptions) -> Arc<Registry> {
    let c = Catalog::from_dir(d.path(), None).expect("catalog");
    Registry::start(c, opts, pool()).expect("registry")
}

fn state(r: &Registry, id: &str) -> ModelState {
    r.status(r.catalog().lookup(id).expect("id")).state
}

fn loaded_ids(r: &Registry) -> Vec<String> {
    r.statuses()
        .into_iter()
        .filter(|s| s.state == ModelState::Loaded)
        .map(|s| s.id)
        .collect()
}

#[test]
fn concurrent_requests_share_one_load() {
    let d = dir(&["a"], "");
    let r = start(&d, options());
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (r, b) = (r.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                r.acquire(Some("a"), WAIT).map(|l| l.id.clone())
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().expect("loaded"), "a");
    }
    let m = &r.metrics;
    assert_eq!(
        m.loads_ok.load(Ordering::Relaxed),
        1,
        "one load for {n} requests"
    );
    assert_eq!(
        m.hits.load(Ordering::Relaxed) + m.misses.load(Ordering::Relaxed),
        n as u64
    );
    assert!(m.misses.load(Ordering::Relaxed) >= 1);
    assert_eq!(m.load_seconds.count(), 1);
    // Now a hit.
    let before = m.hits.load(Ordering::Relaxed);
    drop(r.acquire(Some("a"), Duration::ZERO).expect("loaded"));
    assert_eq!(m.hits.load(Ordering::Relaxed), before + 1);
    r.shutdown();
}

#[test]
fn the_least_recently_used_idle_model_is_evicted_by_count() {
    let d = dir(&["a", "b", "c"], "");
    let r = start(
        &d,
        RegistryOptions {
            models_max: 2,
            ..options()
        },
    );
    drop(r.acquire(Some("a"), WAIT).expect("a"));
    drop(r.acquire(Some("b"), WAIT).expect("b"));
    drop(
        r.acquire(Some("a"), WAIT)
            .expect("a again: b is now least recent"),
    );
    drop(r.acquire(Some("c"), WAIT).expect("c"));
    assert_eq!(loaded_ids(&r), ["a", "c"]);
    assert_eq!(r.metrics.evictions.load(Ordering::Relaxed), 1);
    // A lease keeps its model: with `c` in use and `a` idle, loading `b` evicts `a`.
    let lease_c = r.acquire(Some("c"), WAIT).expect("c");
    drop(r.acquire(Some("b"), WAIT).expect("b"));
    assert_eq!(loaded_ids(&r), ["b", "c"]);
    assert_eq!(lease_c.id, "c");
    drop(lease_c);
    r.shutdown();
}

#[test]
fn memory_bound_counts_bytes_and_pinned_models_stay() {
    let d = dir(
        &["a", "b", "c"],
        "[[model]]\nid = \"a\"\npath = \"a.gguf\"\npin = true\n",
    );
    // Learn what one model holds, then allow a little over two.
    let probe = start(&d, options());
    let one = {
        let l = probe.acquire(Some("b"), WAIT).expect("b");
        l.bytes
    };
    probe.shutdown();
    assert!(one > PAD as u64 * 4, "a model holds its file: {one}");
    let r = start(
        &d,
        RegistryOptions {
            memory_max_bytes: one * 5 / 2,
            when_full: WhenFull::Fail,
            ..options()
        },
    );
    drop(r.acquire(Some("a"), WAIT).expect("a"));
    drop(r.acquire(Some("b"), WAIT).expect("b"));
    drop(
        r.acquire(Some("c"), WAIT)
            .expect("c evicts b, not the pinned a"),
    );
    assert_eq!(loaded_ids(&r), ["a", "c"]);
    let (bytes, n) = r.loaded_bytes();
    assert!(bytes <= one * 5 / 2 && n == 2, "{bytes} {n}");
    // Both remaining models in use (a pinned, c leased): b finds no room and, with `fail`,
    // its request gets a "not loaded" answer at once and b stays available.
    let lc = r.acquire(Some("c"), WAIT).expect("c");
    let e = r.acquire(Some("b"), WAIT).err().expect("no room");
    assert!(
        matches!(&e, AcquireError::Loading { what, .. } if what.contains("no room")),
        "{e}"
    );
    assert_eq!(state(&r, "b"), ModelState::Available);
    assert_eq!(r.metrics.loads_no_room.load(Ordering::Relaxed), 1);
    drop(lc);
    drop(r.acquire(Some("b"), WAIT).expect("room once c is idle"));
    assert_eq!(loaded_ids(&r), ["a", "b"]);
    r.shutdown();
}

#[test]
fn a_full_cache_makes_the_load_wait_until_a_lease_ends() {
    let d = dir(&["a", "b"], "");
    let r = start(
        &d,
        RegistryOptions {
            models_max: 1,
            when_full: WhenFull::Wait,
            ..options()
        },
    );
    let la = r.acquire(Some("a"), WAIT).expect("a");
    let e = r
        .acquire(Some("b"), Duration::from_millis(300))
        .err()
        .expect("b waits for room");
    assert!(matches!(e, AcquireError::Loading { .. }), "{e}");
    assert!(
        eventually(WAIT, || r.status(1).progress.phase == Phase::WaitingForRoom),
        "{:?}",
        r.status(1)
    );
    assert_eq!(
        state(&r, "a"),
        ModelState::Loaded,
        "a is in use: never evicted"
    );
    drop(la);
    drop(r.acquire(Some("b"), WAIT).expect("b loads once a is idle"));
    assert_eq!(loaded_ids(&r), ["b"]);
    r.shutdown();
}

#[test]
fn dependencies_load_first_stay_loaded_and_cannot_be_unloaded() {
    let d = dir(
        &["base", "x", "y"],
        "[[model]]\nid = \"main\"\npath = \"x.gguf\"\ndepends_on = [\"base\"]\n",
    );
    let r = start(
        &d,
        RegistryOptions {
            models_max: 2,
            ..options()
        },
    );
    let events = r.subscribe_all();
    drop(r.acquire(Some("main"), WAIT).expect("main"));
    let ready: Vec<String> = events
        .try_iter()
        .filter(|e| e.progress.phase == Phase::Ready)
        .map(|e| e.model)
        .collect();
    assert_eq!(ready, ["base", "main"], "the dependency is ready first");
    // `y` needs room: `base` is least recently used, but `main` depends on it, so the idle
    // `main` goes and `base` stays.
    drop(r.acquire(Some("y"), WAIT).expect("y"));
    assert_eq!(loaded_ids(&r), ["base", "y"]);
    // `main` again: `base` cannot go while `main` loads, so `y` does.
    drop(r.acquire(Some("main"), WAIT).expect("main again"));
    assert_eq!(loaded_ids(&r), ["main", "base"]);
    let e = r.unload("base").expect_err("refused");
    assert!(
        matches!(&e, AdminError::Dependency { dependent, .. } if dependent == "main"),
        "{e}"
    );
    assert!(e.to_string().contains("depends on it"), "{e}");
    assert_eq!(r.unload("main").expect("unload"), ModelState::Unloading);
    assert!(eventually(WAIT, || state(&r, "main") == ModelState::Available));
    assert_eq!(
        r.unload("base").expect("now allowed"),
        ModelState::Unloading
    );
    r.shutdown();
}

#[test]
fn unload_waits_for_requests_in_flight() {
    let d = dir(&["a"], "");
    let r = start(&d, options());
    let lease = r.acquire(Some("a"), WAIT).expect("a");
    assert_eq!(r.unload("a").expect("unload"), ModelState::Unloading);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(state(&r, "a"), ModelState::Unloading, "the lease holds it");
    // The engine still serves the request in flight.
    let stream = lease
        .handle
        .submit(ryzanstein::engine::GenerationRequest {
            prompt: vec![1, 2, 3],
            max_tokens: 4,
            sampling: Default::default(),
            ignore_eos: true,
            token_group: 1,
        })
        .expect("in-flight request still served");
    let mut tokens = 0;
    while let Some(ev) = stream.recv() {
        match ev {
            ryzanstein::engine::Event::Token(_) => tokens += 1,
            ryzanstein::engine::Event::Finished { .. } => break,
            ryzanstein::engine::Event::Failed(m) => panic!("{m}"),
            _ => {}
        }
    }
    assert_eq!(tokens, 4);
    let e = r
        .acquire(Some("a"), WAIT)
        .err()
        .expect("new requests are refused");
    assert!(e.to_string().contains("unloaded"), "{e}");
    drop(stream);
    drop(lease);
    assert!(eventually(WAIT, || state(&r, "a") == ModelState::Available));
    assert_eq!(r.metrics.unloads.load(Ordering::Relaxed), 1);
    r.shutdown();
}

#[test]
fn corrupt_and_truncated_files_fail_with_the_reason_and_others_serve() {
    let d = dir(&["good"], "");
    let full = tiny_model_bytes(PAD);
    d.write("truncated.gguf", &full[..full.len() / 2]);
    let mut corrupt = full.clone();
    corrupt[0..4].copy_from_slice(b"NOPE");
    d.write("corrupt.gguf", &corrupt);
    d.write("dependent.gguf", &full);
    d.manifest(
        "[[model]]\nid = \"dependent\"\npath = \"dependent.gguf\"\ndepends_on = [\"truncated\"]\n",
    );
    let r = start(&d, options());
    let events = r
        .subscribe(r.catalog().lookup("truncated").unwrap())
        .unwrap();
    for (id, want) in [
        ("truncated", "runs past the end of the file"),
        ("corrupt", "not a gguf file"),
    ] {
        let e = r.acquire(Some(id), WAIT).err().expect("fails");
        let AcquireError::Failed { reason, .. } = &e else {
            panic!("{e}");
        };
        assert!(reason.to_lowercase().contains(want), "{id}: {reason}");
        let s = r.status(r.catalog().lookup(id).unwrap());
        assert_eq!(s.state, ModelState::Failed);
        assert_eq!(s.error.as_deref(), Some(reason.as_str()));
    }
    let last = events.try_iter().last().expect("events");
    assert_eq!(last.progress.phase, Phase::Failed);
    assert!(last.error.expect("reason").contains("runs past the end"));
    let e = r
        .acquire(Some("dependent"), WAIT)
        .err()
        .expect("its dependency failed");
    assert!(e.to_string().contains("dependency 'truncated'"), "{e}");
    drop(
        r.acquire(Some("good"), WAIT)
            .expect("the other models serve"),
    );
    assert_eq!(r.metrics.loads_failed.load(Ordering::Relaxed), 3);
    r.shutdown();
}

#[test]
fn a_load_reports_its_phases_in_order() {
    let d = dir(&["a"], "");
    let r = start(&d, options());
    let rx = r.subscribe(0).expect("subscribe");
    drop(r.acquire(Some("a"), WAIT).expect("a"));
    let evs: Vec<_> = rx.try_iter().collect();
    let mut phases: Vec<Phase> = evs.iter().map(|e| e.progress.phase).collect();
    phases.dedup();
    assert_eq!(
        phases,
        [
            Phase::Unloaded,
            Phase::Queued,
            Phase::Open,
            Phase::Validate,
            Phase::Map,
            Phase::Prefault,
            Phase::Ready
        ],
        "{evs:?}"
    );
    let percents: Vec<f64> = evs.iter().map(|e| e.percent).collect();
    assert!(
        percents.windows(2).skip(1).all(|w| w[0] <= w[1]),
        "{percents:?}"
    );
    let last = evs.last().unwrap();
    assert_eq!(last.percent, 100.0);
    assert_eq!(last.state, ModelState::Loaded);
    assert_eq!(last.progress.bytes_done, last.progress.bytes_total);
    assert!(last.progress.bytes_total > PAD as u64 * 4);
    assert_eq!(last.progress.tensors_done, last.progress.tensors_total);
    r.shutdown();
}

#[test]
fn preloads_run_in_priority_order_on_named_loader_threads() {
    let d = dir(
        &["low", "high", "mid", "lazy"],
        "[[model]]\nid = \"low\"\npath = \"low.gguf\"\npreload = true\npriority = 1\n\
         [[model]]\nid = \"high\"\npath = \"high.gguf\"\npreload = true\npriority = 9\n\
         [[model]]\nid = \"mid\"\npath = \"mid.gguf\"\npreload = true\npriority = 5\n",
    );
    let r = start(&d, options());
    let names = || -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|s| s.trim().to_string())
            .collect()
    };
    // A thread names itself once it runs.
    assert!(
        eventually(WAIT, || {
            let n = names();
            n.iter().any(|n| n == "load-0") && n.iter().any(|n| n == "load-1")
        }),
        "{:?}",
        names()
    );
    let events = r.subscribe_all();
    r.preload();
    assert!(eventually(WAIT, || loaded_ids(&r).len() == 3));
    let opened: Vec<String> = events
        .try_iter()
        .filter(|e| e.progress.phase == Phase::Open)
        .map(|e| e.model)
        .collect();
    assert_eq!(opened, ["high", "mid", "low"]);
    assert_eq!(state(&r, "lazy"), ModelState::Available);
    r.shutdown();
}

/// With one loader thread, a load that waits for room does not block the unload that would
/// make room: the waiting loader finishes the unload itself.
#[test]
fn a_waiting_load_with_one_loader_runs_the_unload_that_frees_room() {
    let d = dir(
        &["a", "b"],
        "[[model]]\nid = \"a\"\npath = \"a.gguf\"\npin = true\n",
    );
    let r = start(
        &d,
        RegistryOptions {
            loader_threads: 1,
            models_max: 1,
            when_full: WhenFull::Wait,
            ..options()
        },
    );
    drop(r.acquire(Some("a"), WAIT).expect("a"));
    assert!(r.acquire(Some("b"), Duration::from_millis(200)).is_err());
    assert!(eventually(WAIT, || r.status(1).progress.phase == Phase::WaitingForRoom));
    assert_eq!(
        r.unload("a").expect("unload the pinned model"),
        ModelState::Unloading
    );
    drop(r.acquire(Some("b"), WAIT).expect("b loads once a is gone"));
    assert_eq!(loaded_ids(&r), ["b"]);
    r.shutdown();
}
