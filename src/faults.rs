//! Fault injection for the fault tests (`tests/faults.rs`): a panic in a request handler, in a
//! model's dispatcher, or in a model's load.
//!
//! Compiled in only with the cargo feature `fault-injection` (off by default; `scripts/test.sh`
//! turns it on for the test build). Without it every hook below is an empty inline function:
//! a release build has no way to trigger a fault — no flag, no variable, no route. With it, the
//! faults come from `RYZANSTEIN_FAULT_INJECTION`, read once, a comma-separated list of:
//!
//! - `handler_panic` — `POST /debug/panic` exists and its handler panics;
//! - `dispatcher_panic=MODEL@STEP` — the dispatcher of `MODEL` panics at its `STEP`th forward
//!   pass (counted from its start);
//! - `loader_panic=MODEL` — the load of `MODEL` panics after it opened the file.
//!
//! Each model fault fires once per process, so the model can be loaded again afterwards.
//!
//! Layer 0: no imports from the rest of the crate.

#[cfg(feature = "fault-injection")]
mod armed {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};

    /// The environment variable that lists the faults.
    pub const VAR: &str = "RYZANSTEIN_FAULT_INJECTION";

    #[derive(Default)]
    pub struct Faults {
        pub handler_panic: bool,
        /// (model, forward pass number).
        pub dispatcher_panic: Vec<(String, u64)>,
        pub loader_panic: Vec<String>,
        /// Faults that fired already ("kind=model").
        pub fired: Mutex<HashSet<String>>,
    }

    pub fn faults() -> &'static Faults {
        static FAULTS: OnceLock<Faults> = OnceLock::new();
        FAULTS.get_or_init(|| parse(&std::env::var(VAR).unwrap_or_default()))
    }

    fn parse(spec: &str) -> Faults {
        let mut f = Faults::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                None if item == "handler_panic" => f.handler_panic = true,
                Some(("dispatcher_panic", arg)) => {
                    let (model, step) = arg.split_once('@').unwrap_or((arg, "1"));
                    let step = step.parse().unwrap_or(1);
                    f.dispatcher_panic.push((model.to_string(), step));
                }
                Some(("loader_panic", model)) => f.loader_panic.push(model.to_string()),
                _ => eprintln!("{VAR}: unknown fault {item:?} (ignored)"),
            }
        }
        f
    }

    /// True the first time `kind` fires for `model`.
    pub fn fire_once(kind: &str, model: &str) -> bool {
        let mut fired = faults().fired.lock().unwrap_or_else(|e| e.into_inner());
        fired.insert(format!("{kind}={model}"))
    }
}

/// Whether `POST /debug/panic` is served (its handler panics).
#[inline]
pub fn handler_panic_route() -> bool {
    #[cfg(feature = "fault-injection")]
    return armed::faults().handler_panic;
    #[cfg(not(feature = "fault-injection"))]
    false
}

/// Called by a model's dispatcher before forward pass number `step` (1-based): panics if a
/// `dispatcher_panic` fault is set for this model and step.
#[inline]
pub fn dispatcher_step(model: &str, step: u64) {
    #[cfg(feature = "fault-injection")]
    {
        let hit = armed::faults()
            .dispatcher_panic
            .iter()
            .any(|(m, s)| m == model && *s == step);
        if hit && armed::fire_once("dispatcher_panic", model) {
            panic!("injected fault: dispatcher_panic in model '{model}' at step {step}");
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = (model, step);
}

/// Called by a load of `model` once its file is open: panics if a `loader_panic` fault is set
/// for this model.
#[inline]
pub fn loader(model: &str) {
    #[cfg(feature = "fault-injection")]
    {
        let hit = armed::faults().loader_panic.iter().any(|m| m == model);
        if hit && armed::fire_once("loader_panic", model) {
            panic!("injected fault: loader_panic in model '{model}'");
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = model;
}
