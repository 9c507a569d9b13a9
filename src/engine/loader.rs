//! The `load-N` threads: they take jobs from the registry's queue, highest priority first —
//! drains of unloaded models, then loads (requested before preloaded, then by catalog
//! priority, then first come), then file probes — and do the file work the registry never
//! does under its lock.
//!
//! A load holds one permit of the load semaphore (`max_concurrent_loads`) from start to end
//! and goes through its phases: make room (evict least recently used idle models), open
//! (mmap and parse the GGUF), validate (tokenizer, chat template), map (the model's tensors),
//! prefault (touch every page of the weights), then the model's engine starts and it is
//! `loaded`. Each phase is reported as a [`Progress`] event.
//!
//! **Invariant:** loading never runs on an HTTP worker, a dispatcher or the rayon pool: only
//! here. The file work of a load (open, validate, map, prefault) and the freeing of an
//! unloaded model run on the load thread's long-lived helper thread (`load-N-work`) at the
//! lowest CPU priority (`SCHED_IDLE` on Linux, which a waking thread of normal
//! priority preempts at once; nice 19 where that is refused), so on a busy machine a load
//! takes the time the running models leave over instead of slowing their steps. The `load-N`
//! threads themselves keep normal priority because they start the model's dispatcher thread,
//! and a thread inherits its creator's priority: a dispatcher born at nice 19 would lose
//! every contended core to the compute threads it feeds. A helper at `SCHED_IDLE` must share
//! no lock with threads of normal priority, or they wait whenever it is preempted holding it
//! (priority inversion): the server gives every thread its own malloc arena for that reason
//! (`give_threads_their_own_malloc_arenas` in `server`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use crate::gguf::GgufFile;
use crate::model::chat::ChatTemplate;
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;

use super::catalog::quantization_name;
use super::dispatcher::ModelHandle;
use super::panic_message;
use super::registry::{
    FileInfo, Inner, Job, JobKind, LoadedModel, ModelState, Phase, Progress, Registry, WhenFull,
};

/// CPU niceness of a load's helper thread where `SCHED_IDLE` is refused (Linux: per thread).
const LOADER_NICE: i32 = 19;
/// How often a load waiting for room re-checks (a lease ending also wakes it).
const ROOM_POLL: Duration = Duration::from_millis(100);
/// Bytes of weights touched between two progress events, at most.
const PREFAULT_REPORT_BYTES: u64 = 16 << 20;
/// Page size for prefaulting (touching one byte per page maps it).
const PAGE_BYTES: usize = 4096;

/// A loader thread's loop: until shutdown, take the best runnable job and run it.
pub(crate) fn run(reg: &Arc<Registry>) {
    loop {
        let job = {
            let mut g = reg.lock();
            loop {
                if g.shutdown {
                    return;
                }
                let dead = reg.reap_failed(&mut g);
                if !dead.is_empty() {
                    drop(g);
                    drop_models(dead);
                    g = reg.lock();
                    continue;
                }
                if let Some(j) = take_job(reg, &mut g) {
                    break j;
                }
                g = reg
                    .work
                    .wait_timeout(g, ROOM_POLL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        match job.kind {
            JobKind::Drain => drain(reg, job.index),
            JobKind::Probe => probe(reg, job.index),
            JobKind::Load => {
                load(reg, job.index);
                reg.lock().permits_free += 1;
                reg.work.notify_all();
            }
        }
    }
}

/// Removes and returns the best runnable job; a load takes a semaphore permit.
fn take_job(reg: &Registry, g: &mut MutexGuard<'_, Inner>) -> Option<Job> {
    let rank = |j: &Job| {
        let kind = match j.kind {
            JobKind::Drain => 2,
            JobKind::Load => 1,
            JobKind::Probe => 0,
        };
        let prio = reg.catalog.entries()[j.index].priority;
        (kind, j.demand, prio, std::cmp::Reverse(j.seq))
    };
    let mut best: Option<usize> = None;
    for (k, j) in g.jobs.iter().enumerate() {
        let runnable = match j.kind {
            JobKind::Drain => g.slots[j.index].leases == 0,
            JobKind::Probe => true,
            JobKind::Load => {
                let deps = &reg.catalog.entries()[j.index].depends_on;
                let failed_dep = deps.iter().any(|&d| g.slots[d].state == ModelState::Failed);
                failed_dep
                    || (g.permits_free > 0
                        && deps.iter().all(|&d| g.slots[d].state == ModelState::Loaded))
            }
        };
        if runnable && best.is_none_or(|b| rank(j) > rank(&g.jobs[b])) {
            best = Some(k);
        }
    }
    // A dependency that left the cache (or was never queued) is asked for again.
    let waiting: Vec<(usize, bool)> = g
        .jobs
        .iter()
        .filter(|j| j.kind == JobKind::Load)
        .map(|j| (j.index, j.demand))
        .collect();
    for (i, demand) in waiting {
        if reg.catalog.entries()[i]
            .depends_on
            .iter()
            .any(|&d| g.slots[d].state == ModelState::Available)
        {
            reg.request_load(g, i, demand);
        }
    }
    let job = g.jobs.swap_remove(best?);
    if job.kind == JobKind::Load {
        let failed_dep = reg.catalog.entries()[job.index]
            .depends_on
            .iter()
            .any(|&d| g.slots[d].state == ModelState::Failed);
        if !failed_dep {
            g.permits_free -= 1;
        } else {
            // Runs without a permit: it fails at once.
            let dep = reg.catalog.entries()[job.index]
                .depends_on
                .iter()
                .copied()
                .find(|&d| g.slots[d].state == ModelState::Failed)
                .expect("a failed dependency");
            let msg = format!(
                "its dependency '{}' failed to load: {}",
                reg.id(dep),
                g.slots[dep].error.clone().unwrap_or_default()
            );
            fail(reg, g, job.index, msg);
            return None;
        }
    }
    Some(job)
}

/// Marks a load failed (under the lock) and wakes its waiters.
fn fail(reg: &Registry, g: &mut Inner, i: usize, msg: String) {
    tracing::error!(model = reg.id(i), "load failed: {msg}");
    reg.metrics.loads_failed.fetch_add(1, Ordering::Relaxed);
    let s = &mut g.slots[i];
    s.state = ModelState::Failed;
    s.error = Some(msg);
    s.reserved_bytes = 0;
    reg.emit(g, i, Progress::new(Phase::Failed));
    reg.changed.notify_all();
}

/// Runs one load: make room, build, publish.
fn load(reg: &Arc<Registry>, i: usize) {
    let t0 = Instant::now();
    let entry = &reg.catalog.entries()[i];
    let estimate = std::fs::metadata(&entry.path).map_or(entry.file_bytes, |m| m.len());
    {
        let mut g = reg.lock();
        if g.slots[i].state != ModelState::Queued {
            return; // unloaded while queued
        }
        g.slots[i].state = ModelState::Loading;
        g.slots[i].reserved_bytes = estimate;
        reg.emit(&mut g, i, Progress::new(Phase::Open));
        reg.changed.notify_all();
    }
    if !make_room(reg, i, estimate) {
        return;
    }
    let result = catch_unwind(AssertUnwindSafe(|| build(reg, i)))
        .unwrap_or_else(|p| Err(format!("the loader panicked: {}", panic_message(&*p))));
    let secs = t0.elapsed().as_secs_f64();
    reg.metrics.load_seconds.observe(secs);
    let mut g = reg.lock();
    match result {
        Ok(m) => {
            let bytes = m.bytes;
            g.tick += 1;
            let tick = g.tick;
            let s = &mut g.slots[i];
            s.state = ModelState::Loaded;
            s.loaded = Some(Arc::new(m));
            s.reserved_bytes = 0;
            s.last_used = tick;
            s.error = None;
            let p = Progress {
                phase: Phase::Ready,
                ..s.progress.clone()
            };
            reg.emit(&mut g, i, p);
            reg.metrics.loads_ok.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                model = reg.id(i),
                secs = format!("{secs:.2}"),
                bytes,
                "model loaded"
            );
            // The estimate was the file alone: evict more if the KV pool tipped it over.
            let victims = evict_for(reg, &mut g, i, 0);
            drop(g);
            reg.changed.notify_all();
            reg.work.notify_all();
            drop_models(victims.unwrap_or_default());
        }
        Err(msg) => {
            fail(reg, &mut g, i, msg);
            drop(g);
            reg.work.notify_all();
        }
    }
}

/// Evicts until model `i` (needing `need` more bytes) fits; waits or gives up when nothing
/// can be evicted, as configured. False if the load was given up.
fn make_room(reg: &Arc<Registry>, i: usize, need: u64) -> bool {
    let mut g = reg.lock();
    let mut waiting = false;
    loop {
        // `i`'s reservation (`need`) is already counted as held.
        if let Some(victims) = evict_for(reg, &mut g, i, 0) {
            if waiting {
                reg.emit(&mut g, i, Progress::new(Phase::Open));
            }
            drop(g);
            drop_models(victims);
            return true;
        }
        let max = reg.opts.memory_max_bytes;
        let never_fits = max > 0 && need > max;
        if never_fits || g.shutdown || reg.opts.when_full == WhenFull::Fail {
            let msg = if never_fits {
                format!("the model needs {need} bytes; models_memory_max is {max}")
            } else {
                "no room: every loaded model is in use, pinned or a dependency".to_string()
            };
            tracing::warn!(model = reg.id(i), "load not started: {msg}");
            reg.metrics.loads_no_room.fetch_add(1, Ordering::Relaxed);
            let s = &mut g.slots[i];
            s.reserved_bytes = 0;
            if never_fits {
                fail(reg, &mut g, i, msg);
            } else {
                s.state = ModelState::Available;
                s.error = Some(msg);
                reg.emit(&mut g, i, Progress::new(Phase::Failed));
                reg.changed.notify_all();
            }
            return false;
        }
        if !waiting {
            waiting = true;
            reg.emit(&mut g, i, Progress::new(Phase::WaitingForRoom));
        }
        // An unload ready to finish frees room: run it here, as this thread may be the only
        // loader.
        let ready_drain = g
            .jobs
            .iter()
            .position(|j| j.kind == JobKind::Drain && g.slots[j.index].leases == 0);
        if let Some(k) = ready_drain {
            let job = g.jobs.swap_remove(k);
            drop(g);
            drain(reg, job.index);
            g = reg.lock();
            continue;
        }
        g = reg
            .work
            .wait_timeout(g, ROOM_POLL)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Picks victims so that model `i` fits with `need` more bytes and marks them evicted
/// (`available`); `None` if the bounds cannot be met. The caller drops the victims after
/// releasing the lock.
fn evict_for(reg: &Registry, g: &mut Inner, i: usize, need: u64) -> Option<Vec<Arc<LoadedModel>>> {
    let (max_bytes, max_n) = (reg.opts.memory_max_bytes, reg.opts.models_max);
    let held = |g: &Inner| {
        g.slots
            .iter()
            .fold((0u64, 0usize), |(b, n), s| match s.state {
                ModelState::Loaded | ModelState::Unloading | ModelState::Loading => (
                    b + s.loaded.as_ref().map_or(s.reserved_bytes, |m| m.bytes),
                    n + 1,
                ),
                _ => (b, n),
            })
    };
    // `i` itself is already counted (loading with its reservation, or loaded).
    let fits = |g: &Inner| {
        let (b, n) = held(g);
        (max_bytes == 0 || b + need <= max_bytes) && (max_n == 0 || n <= max_n)
    };
    let mut victims: Vec<Arc<LoadedModel>> = Vec::new();
    while !fits(g) {
        let v = (0..g.slots.len())
            .filter(|&j| j != i && evictable(reg, g, j))
            .min_by_key(|&j| g.slots[j].last_used);
        let Some(v) = v else {
            // Put back what was taken: the bounds cannot be met now.
            for m in victims {
                let j = reg.catalog.lookup(&m.id).expect("in the catalog");
                g.slots[j].state = ModelState::Loaded;
                g.slots[j].loaded = Some(m);
            }
            return None;
        };
        let s = &mut g.slots[v];
        s.state = ModelState::Available;
        victims.push(s.loaded.take().expect("a loaded model"));
    }
    for m in &victims {
        let j = reg.catalog.lookup(&m.id).expect("in the catalog");
        reg.metrics.evictions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(model = reg.id(j), "evicted (least recently used)");
        reg.emit(g, j, Progress::new(Phase::Evicted));
    }
    Some(victims)
}

/// Loaded, idle, not pinned, and no model in the cache depends on it.
fn evictable(reg: &Registry, g: &Inner, j: usize) -> bool {
    let s = &g.slots[j];
    s.state == ModelState::Loaded
        && s.leases == 0
        && !reg.catalog.entries()[j].pin
        && !(0..g.slots.len()).any(|k| {
            matches!(
                g.slots[k].state,
                ModelState::Loaded
                    | ModelState::Loading
                    | ModelState::Queued
                    | ModelState::Unloading
            ) && reg.catalog.entries()[k].depends_on.contains(&j)
        })
}

/// Stops the engines of evicted models and frees them (their leases are all gone).
fn drop_models(victims: Vec<Arc<LoadedModel>>) {
    for m in &victims {
        m.handle.drain();
    }
    drop_at_low_priority(victims);
}

/// Frees `x` (a model's maps, tokenizer and KV memory: tens of milliseconds of CPU for a
/// large vocabulary) on a low-priority helper thread, like the file work of a load.
fn drop_at_low_priority<T: Send + 'static>(x: T) {
    if let Err(e) = on_low_priority_thread(move || drop(x)) {
        tracing::warn!("{e}; freed at normal priority");
    }
}

/// Drops an unloaded model once its last lease ended.
fn drain(reg: &Registry, i: usize) {
    let m = {
        let mut g = reg.lock();
        if g.slots[i].state != ModelState::Unloading {
            return;
        }
        g.slots[i].state = ModelState::Available;
        reg.metrics.unloads.fetch_add(1, Ordering::Relaxed);
        g.slots[i].loaded.take()
    };
    if let Some(m) = m {
        m.handle.drain();
        drop_at_low_priority(m);
    }
    tracing::info!(model = reg.id(i), "unloaded");
    let mut g = reg.lock();
    reg.emit(&mut g, i, Progress::new(Phase::Unloaded));
    drop(g);
    reg.changed.notify_all();
    reg.work.notify_all();
}

/// Reads a file's header for `/v1/models`; a bad file is reported when it is loaded.
fn probe(reg: &Registry, i: usize) {
    if reg.lock().slots[i].info.is_some() {
        return;
    }
    let path = &reg.catalog.entries()[i].path;
    if let Ok(file) = GgufFile::open(path) {
        let info = file_info(&file);
        reg.lock().slots[i].info.get_or_insert(info);
    }
}

fn file_info(file: &GgufFile) -> FileInfo {
    let md = file.metadata();
    let arch = md
        .get_str("general.architecture")
        .ok()
        .flatten()
        .unwrap_or("unknown")
        .to_string();
    FileInfo {
        n_ctx_train: md.get_u64(&format!("{arch}.context_length")).ok().flatten(),
        architecture: arch,
        quantization: quantization_name(file),
        n_tensors: file.tensors().len(),
    }
}

/// Reports progress of model `i`.
fn report(reg: &Registry, i: usize, p: Progress) {
    let mut g = reg.lock();
    reg.emit(&mut g, i, p);
}

/// What a load's file work produces: everything but the running engine.
struct Prepared {
    file: Arc<GgufFile>,
    model: Model,
    tokenizer: Arc<Tokenizer>,
    chat: Result<ChatTemplate, String>,
}

/// Opens, validates, maps and prefaults model `i` (on a low-priority helper thread) and
/// starts its engine (from this thread, so the dispatcher has normal priority).
fn build(reg: &Arc<Registry>, i: usize) -> Result<LoadedModel, String> {
    assert!(
        std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("load-")),
        "models load on the load-N threads only"
    );
    let Prepared {
        file,
        model,
        tokenizer,
        chat,
    } = {
        let reg = reg.clone();
        on_low_priority_thread(move || prepare(&reg, i))??
    };
    let entry = &reg.catalog.entries()[i];
    let bytes_total = file.bytes().len() as u64;
    let tensors_total = file.tensors().len();
    let handle = ModelHandle::start(
        &entry.id,
        Arc::new(model),
        tokenizer.clone(),
        reg.engine_options(i),
        reg.pool.clone(),
    )
    .map_err(|e| format!("{}: {e}", entry.path.display()))?;
    let state_bytes = handle.stats().state_bytes.load(Ordering::Relaxed) as u64;
    report(
        reg,
        i,
        Progress {
            phase: Phase::Prefault,
            bytes_done: bytes_total,
            bytes_total,
            tensors_done: tensors_total,
            tensors_total,
        },
    );
    Ok(LoadedModel {
        id: entry.id.clone(),
        handle,
        tokenizer,
        chat,
        created: unix_now(),
        bytes: bytes_total + state_bytes,
    })
}

/// The file work of a load: open, validate, map and prefault model `i`.
fn prepare(reg: &Registry, i: usize) -> Result<Prepared, String> {
    let entry = &reg.catalog.entries()[i];
    let path: &Path = &entry.path;
    let ctx = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let opts = reg.engine_options(i);
    // GGUF and model errors name the file themselves.
    let file = Arc::new(GgufFile::open(path).map_err(|e| e.to_string())?);
    crate::faults::loader(&entry.id);
    let bytes_total = file.bytes().len() as u64;
    let tensors_total = file.tensors().len();
    let progress = |phase, bytes_done, tensors_done| Progress {
        phase,
        bytes_done,
        bytes_total,
        tensors_done,
        tensors_total,
    };
    {
        let info = file_info(&file);
        let mut g = reg.lock();
        g.slots[i].info = Some(info);
        reg.emit(&mut g, i, progress(Phase::Validate, 0, 0));
    }
    let tokenizer = Arc::new(Tokenizer::from_gguf(&file).map_err(|e| ctx(&e))?);
    let chat = ChatTemplate::from_gguf(&file, &tokenizer, entry.chat_template.as_deref())
        .map_err(|e| ctx(&e));
    if let Err(e) = &chat {
        if entry.chat_template.is_some() {
            return Err(format!("the chat_template override: {e}"));
        }
        tracing::warn!(model = %entry.id, "chat completions are unavailable: {e}");
    }
    report(reg, i, progress(Phase::Map, 0, 0));
    let model = Model::from_file(file.clone(), opts.model_options()).map_err(|e| e.to_string())?;
    report(reg, i, progress(Phase::Map, 0, tensors_total));
    if reg.opts.prefault {
        prefault(&file, |bytes, tensors| {
            report(reg, i, progress(Phase::Prefault, bytes, tensors));
        });
    }
    Ok(Prepared {
        file,
        model,
        tokenizer,
        chat,
    })
}

/// A job for a load thread's helper.
type HelperJob = Box<dyn FnOnce() + Send>;

thread_local! {
    /// This load thread's helper: a long-lived thread at the lowest CPU priority (started on
    /// first use, ended when this thread ends and drops the sender). One per load thread
    /// rather than one per job: a thread per load made resident memory creep (each new
    /// thread's stack and malloc arena) in `tests/models_soak.rs`.
    static HELPER: std::cell::RefCell<Option<crossbeam_channel::Sender<HelperJob>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `work` on this load thread's helper (`load-N-work`, lowest CPU priority) and waits
/// for it. A panic in `work` resumes here, where the load's `catch_unwind` turns it into a
/// failed load.
fn on_low_priority_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let tx = HELPER.with(|h| -> Result<_, String> {
        let mut h = h.borrow_mut();
        if h.is_none() {
            *h = Some(start_helper()?);
        }
        Ok(h.as_ref().expect("started").clone())
    })?;
    let (rtx, rrx) = crossbeam_channel::bounded(1);
    let job: HelperJob = Box::new(move || {
        let _ = rtx.send(catch_unwind(AssertUnwindSafe(work)));
    });
    if tx.send(job).is_err() {
        HELPER.with(|h| h.borrow_mut().take());
        return Err("the loader helper thread is gone".to_string());
    }
    match rrx.recv() {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => Err("the loader helper thread ended during a job".to_string()),
    }
}

/// Starts this load thread's helper thread.
fn start_helper() -> Result<crossbeam_channel::Sender<HelperJob>, String> {
    let name = format!("{}-work", std::thread::current().name().unwrap_or("load"));
    let (tx, rx) = crossbeam_channel::unbounded::<HelperJob>();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            lower_priority();
            for job in rx {
                job();
            }
        })
        .map_err(|e| format!("cannot start a loader helper thread: {e}"))?;
    Ok(tx)
}

/// Touches one byte per page of every tensor's data, in file order, reporting progress
/// every `PREFAULT_REPORT_BYTES` and at the end.
fn prefault(file: &GgufFile, mut on_progress: impl FnMut(u64, usize)) {
    let mut done = file.data_offset();
    let mut reported = 0u64;
    let mut sum = 0u8;
    let n = file.tensors().len();
    for (k, t) in file.tensors().iter().enumerate() {
        let data = file.tensor_data(t);
        for b in data.iter().step_by(PAGE_BYTES) {
            sum = sum.wrapping_add(*b);
        }
        done += t.n_bytes;
        if done - reported >= PREFAULT_REPORT_BYTES || k + 1 == n {
            reported = done;
            on_progress(done.min(file.bytes().len() as u64), k + 1);
        }
    }
    std::hint::black_box(sum);
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Lowers this thread's CPU priority to `SCHED_IDLE`, or nice 19 if that is refused (Linux
/// threads have their own policy and nice value; threads it starts inherit them).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on this thread's own id (0: the calling thread) with a
    // parameter that lives across the call; no memory is shared.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 {
            return;
        }
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, LOADER_NICE) != 0 {
            tracing::debug!("cannot lower the loader helper thread's priority");
        }
    }
}
