//! The model routes: `GET /v1/models` (every catalog model with its state), `GET
//! /v1/models/{id}`, `GET /v1/models/{id}/events` (load progress as SSE), and the admin
//! routes `POST /v1/models/{id}/load` and `POST /v1/models/{id}/unload`.
//!
//! **Boundary:** `{id}` is only ever looked up in the catalog (`Registry::catalog().lookup`):
//! it never reaches the filesystem.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::ApiError;
use crate::engine::{AdminError, ModelState, ModelStatus};

use super::generate::InFlight;
use super::http::HttpRequest;
use super::routes::Reply;
use super::State;

/// The path patterns of the per-model routes, and what follows `/v1/models/{id}` in each.
pub(crate) const MODEL_ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/v1/models/{id}", ""),
    ("GET", "/v1/models/{id}/events", "/events"),
    ("POST", "/v1/models/{id}/load", "/load"),
    ("POST", "/v1/models/{id}/unload", "/unload"),
];

/// The route pattern of a `/v1/models/...` path, and the id in it.
pub(crate) fn route_of(path: &str) -> Option<(&'static str, &str)> {
    let rest = path.strip_prefix("/v1/models/")?;
    let (id, tail) = match rest.find('/') {
        Some(k) => rest.split_at(k),
        None => (rest, ""),
    };
    if id.is_empty() {
        return None;
    }
    MODEL_ROUTES
        .iter()
        .find(|(_, _, t)| *t == tail)
        .map(|(_, p, _)| (*p, id))
}

fn status_json(st: &State, s: &ModelStatus) -> Value {
    let mut v = json!({
        "id": s.id,
        "object": "model",
        "created": s.created,
        "owned_by": "ryzanstein",
        "ready": s.state == ModelState::Loaded,
        "state": s.state,
        "aliases": s.aliases,
        "size_bytes": s.file_bytes,
        "loaded_bytes": s.loaded_bytes,
        "architecture": s.info.as_ref().map(|i| i.architecture.clone()),
        "quantization": s.info.as_ref().map(|i| i.quantization.clone()),
        "max_model_len": s.n_ctx,
        "pinned": s.pin,
        "preload": s.preload,
        "priority": s.priority,
        "depends_on": s.depends_on,
        "in_flight": s.in_flight,
        "default": st.registry.catalog().default_index() == Some(s.index),
    });
    if matches!(s.state, ModelState::Loading | ModelState::Queued) {
        v["percent"] = json!((s.progress.percent() * 10.0).round() / 10.0);
        v["phase"] = json!(s.progress.phase);
    }
    if let Some(e) = &s.error {
        v["error"] = json!(e);
    }
    v
}

/// `GET /v1/models`.
pub(crate) fn list(st: &State) -> Value {
    let data: Vec<Value> = st
        .registry
        .statuses()
        .iter()
        .map(|s| status_json(st, s))
        .collect();
    json!({"object": "list", "data": data})
}

fn index(st: &State, id: &str) -> Result<usize, ApiError> {
    st.registry
        .catalog()
        .lookup(id)
        .ok_or_else(|| ApiError::model_not_found(id))
}

/// `GET /v1/models/{id}`.
pub(crate) fn one(st: &State, id: &str) -> Result<Reply, ApiError> {
    let i = index(st, id)?;
    Ok(Reply::Json(status_json(st, &st.registry.status(i))))
}

fn admin_error(e: AdminError, retry_after_s: u64) -> ApiError {
    match e {
        AdminError::NotFound(id) => ApiError::model_not_found(&id),
        AdminError::Dependency { .. } | AdminError::Loading(_) => ApiError {
            status: 409,
            code: Some("conflict"),
            ..ApiError::invalid("model", e.to_string())
        },
        AdminError::ShuttingDown => ApiError::unavailable(e.to_string(), retry_after_s),
    }
}

/// `POST /v1/models/{id}/load`: 200 if it is loaded, else 202 (queued or loading).
pub(crate) fn load(st: &State, id: &str) -> Result<Reply, ApiError> {
    let i = index(st, id)?;
    let state = st
        .registry
        .load(id)
        .map_err(|e| admin_error(e, st.cfg().limits.retry_after_s))?;
    let body = status_json(st, &st.registry.status(i));
    Ok(if state == ModelState::Loaded {
        Reply::Json(body)
    } else {
        Reply::Accepted(body)
    })
}

/// `POST /v1/models/{id}/unload`: 200 if it is not loaded (any more), else 202 (unloading:
/// its requests in flight finish first).
pub(crate) fn unload(st: &State, id: &str) -> Result<Reply, ApiError> {
    let i = index(st, id)?;
    let state = st
        .registry
        .unload(id)
        .map_err(|e| admin_error(e, st.cfg().limits.retry_after_s))?;
    let body = status_json(st, &st.registry.status(i));
    Ok(if state == ModelState::Unloading {
        Reply::Accepted(body)
    } else {
        Reply::Json(body)
    })
}

/// `GET /v1/models/{id}/events`: the model's state now, then every event until a load or an
/// unload ends (`ready`, `failed`, `evicted`, `unloaded`); at once if the model is loaded or
/// failed. Comment pings keep idle streams open and notice a client that left.
pub(crate) fn events(st: &State, req: &mut HttpRequest, id: &str) -> Result<Reply, ApiError> {
    let i = index(st, id)?;
    let _slot = InFlight::acquire(st)?;
    let rx = st.registry.subscribe(i).ok_or_else(|| {
        ApiError::unavailable(
            "too many event streams for this model",
            st.cfg().limits.retry_after_s,
        )
    })?;
    let Ok(mut sse) = req.into_sse() else {
        return Ok(Reply::Done(200));
    };
    let ping_every = Duration::from_millis(st.cfg().limits.ping_interval_ms);
    let mut first = true;
    let mut last_write = Instant::now();
    loop {
        if st.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        match rx.recv_timeout(ping_every) {
            Ok(ev) => {
                let was_first = std::mem::take(&mut first);
                let idle = was_first && matches!(ev.state, ModelState::Loaded | ModelState::Failed);
                let Ok(v) = serde_json::to_value(&ev) else {
                    break;
                };
                if sse.data(&v).is_err() {
                    return Ok(Reply::Done(200));
                }
                last_write = Instant::now();
                // The snapshot of an available model is not an end: a load may follow.
                if idle || (!was_first && ev.is_terminal()) {
                    break;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if last_write.elapsed() >= ping_every {
                    if sse.ping().is_err() {
                        return Ok(Reply::Done(200));
                    }
                    last_write = Instant::now();
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = sse.done();
    Ok(Reply::Done(200))
}
