//! Helpers for the model-manager tests: a temporary models directory of tiny Gemma 3 files
//! (built in memory, a few MB each so that memory bounds mean something), links to the real
//! model, and a server on such a directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ryzanstein::config::ServeConfig;
use ryzanstein::engine::Catalog;
use ryzanstein::server::{Server, ServerOptions};

use super::common::TinyGemma3;

/// Context length of the tiny test models (and of the servers that serve them).
pub const TINY_CTX: usize = 128;

/// A tiny Gemma 3 with a context of `TINY_CTX` and an unused `pad` tensor of `pad_floats`
/// f32s (so the file, and what a load maps and prefaults, has a chosen size).
pub fn tiny_model_bytes(pad_floats: usize) -> Vec<u8> {
    tiny_model(pad_floats).to_bytes()
}

/// The model of [`tiny_model_bytes`], to edit before writing.
pub fn tiny_model(pad_floats: usize) -> TinyGemma3 {
    use ryzanstein::gguf::Value;
    let mut m = TinyGemma3::new()
        .with_key("gemma3.context_length", Value::U32(TINY_CTX as u32))
        .with_key("tokenizer.ggml.model", Value::String("llama".into()))
        .with_key("tokenizer.ggml.eos_token_id", Value::U32(1));
    if pad_floats > 0 {
        m.tensors.push((
            "pad.weight".into(),
            vec![pad_floats as u64],
            vec![0.5; pad_floats],
        ));
    }
    m
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "ryz-models-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create the models directory");
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` (e.g. "a.gguf") with `bytes`.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write a model file");
        p
    }

    /// Links `name` to the real default model (no copy).
    pub fn link_default_model(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        std::os::unix::fs::symlink(super::common::default_model_path(), &p).expect("symlink");
        p
    }

    /// Makes `name` a FIFO: a load of it blocks in open() until the test writes to it.
    pub fn fifo(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        let ok = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .expect("mkfifo")
            .success();
        assert!(ok, "mkfifo {}", p.display());
        p
    }

    /// Writes the manifest.
    pub fn manifest(&self, text: &str) {
        std::fs::write(self.0.join("models.toml"), text).expect("write models.toml");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test configuration for tiny models: 2 compute threads, short context, small batches.
pub fn tiny_config() -> ServeConfig {
    let mut c = ServeConfig {
        listen: "127.0.0.1:0".into(),
        threads: 2,
        ..ServeConfig::default()
    };
    c.engine.n_ctx = TINY_CTX;
    c.engine.max_batch_size = 4;
    c.engine.max_batch_tokens = 64;
    c.engine.queue_depth = 64;
    c.models.load_wait_ms = 10_000;
    c
}

/// Starts a server on the catalog of `dir` (not waiting for any model).
pub fn serve_dir(dir: &Path, config: ServeConfig) -> Server {
    let catalog = Catalog::from_dir(dir, None).expect("valid catalog");
    Server::start(ServerOptions {
        config,
        model_path: PathBuf::new(),
        catalog: Some(catalog),
        panic_route: false,
    })
    .expect("server starts")
}

/// Polls `f` until it is true or `timeout` passes; says whether it became true.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Quantiles of a sample (sorted copy): `q` in [0, 1].
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Threads of this process (`/proc/self/task`).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Resident memory of this process in bytes.
pub fn rss_bytes() -> u64 {
    ryzanstein::server::metrics::resident_bytes().unwrap_or(0)
}
