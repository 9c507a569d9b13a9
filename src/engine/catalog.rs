//! The catalog: every model the server can serve, fixed at start.
//!
//! A catalog comes from a models directory (every `*.gguf` file in it, id = file name without
//! `.gguf`) plus an optional manifest, `models.toml`, that names models explicitly and sets
//! their options; or from a single file (`serve -m FILE`: a catalog of one). It is validated
//! once, when it is built: unknown keys, missing files, bad or duplicate ids and aliases,
//! unknown dependencies and dependency cycles are [`CatalogError`]s naming the entry.
//!
//! **Invariant:** a model id or alias from a request is only ever a key into this catalog; it
//! never becomes part of a path. Paths come from the operator's directory and manifest only.
//!
//! Manifest format (every key but `id` and `path` optional):
//!
//! ```toml
//! default = "gemma"                  # the model of requests that name none
//! [[model]]
//! id = "gemma"
//! path = "gemma-3-270m-q4_k_m.gguf"  # relative to the models directory
//! aliases = ["small"]
//! priority = 10                      # preload and load-queue order, higher first
//! preload = true                     # load at start
//! pin = true                         # never evicted
//! n_ctx = 2048                       # per-model engine limits
//! max_batch_size = 16
//! max_batch_tokens = 256
//! queue_depth = 64
//! kv_pool_bytes = 0
//! chat_template = "{% for m in messages %}...{% endfor %}"
//! depends_on = ["other"]             # loaded first, kept while this one is loaded
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Longest model id or alias in bytes.
pub const MODEL_ID_BYTES_MAX: usize = 128;
/// Most models in one catalog (each may hold a dispatcher thread and its memory).
pub const CATALOG_MODELS_MAX: usize = 1024;
/// Largest manifest file in bytes.
pub const MANIFEST_BYTES_MAX: u64 = 1 << 20;

/// Engine limits a manifest entry may set for its model (unset = the server's setting).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelLimits {
    pub n_ctx: Option<usize>,
    pub max_batch_size: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub queue_depth: Option<usize>,
    pub kv_pool_bytes: Option<usize>,
}

/// One model of the catalog.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelEntry {
    /// The name clients use (`model` in requests); unique across ids and aliases.
    pub id: String,
    pub path: PathBuf,
    pub aliases: Vec<String>,
    /// Load-queue and preload order: higher first.
    pub priority: i32,
    pub preload: bool,
    /// Never evicted.
    pub pin: bool,
    pub limits: ModelLimits,
    /// Chat template source that overrides the file's.
    pub chat_template: Option<String>,
    /// Indices (into the catalog) of the models this one needs loaded first.
    pub depends_on: Vec<usize>,
    /// Size of the file at start (0 for a file that is not a regular file).
    pub file_bytes: u64,
}

/// Why a catalog cannot be built; `entry` names the manifest entry (or file) at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: {entry}: {msg}")]
pub struct CatalogError {
    /// The manifest or directory.
    pub source_name: String,
    /// `model 'id'`, `model #3`, or `file NAME`.
    pub entry: String,
    pub msg: String,
}

/// Every servable model, validated.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    entries: Vec<ModelEntry>,
    /// Id or alias → index.
    names: HashMap<String, usize>,
    default: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    default: Option<String>,
    #[serde(default)]
    model: Vec<ManifestModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestModel {
    id: String,
    path: PathBuf,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    preload: bool,
    #[serde(default)]
    pin: bool,
    n_ctx: Option<usize>,
    max_batch_size: Option<usize>,
    max_batch_tokens: Option<usize>,
    queue_depth: Option<usize>,
    kv_pool_bytes: Option<usize>,
    chat_template: Option<String>,
    #[serde(default)]
    depends_on: Vec<String>,
}

/// Whether `name` can be a model id or alias: 1 to 128 bytes of ASCII letters, digits and
/// `.`, `_`, `-`, `:`, not starting with `.` (no `/`: ids are path segments of the admin
/// routes, and never file names).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MODEL_ID_BYTES_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// A file's size if it is a regular file; `Ok(0)` for other kinds (a FIFO, a device).
fn file_size(path: &Path) -> std::io::Result<u64> {
    let md = std::fs::metadata(path)?;
    Ok(if md.is_file() { md.len() } else { 0 })
}

impl Catalog {
    /// A catalog of one model (`serve -m FILE`). The file is not checked here: as before the
    /// catalog existed, a missing or bad file is a load failure.
    pub fn single(id: &str, path: &Path) -> Catalog {
        let entry = ModelEntry {
            id: id.to_string(),
            path: path.to_path_buf(),
            aliases: Vec::new(),
            priority: 0,
            preload: true,
            pin: true,
            limits: ModelLimits::default(),
            chat_template: None,
            depends_on: Vec::new(),
            file_bytes: file_size(path).unwrap_or(0),
        };
        let mut c = Catalog::default();
        c.names.insert(entry.id.clone(), 0);
        c.entries.push(entry);
        c.default = Some(0);
        c
    }

    /// The catalog of a models directory: the manifest's models (`manifest`, else
    /// `dir/models.toml` if present) then every other `*.gguf` file in `dir`, with default
    /// options.
    pub fn from_dir(dir: &Path, manifest: Option<&Path>) -> Result<Catalog, CatalogError> {
        let dir_name = dir.display().to_string();
        let err = |entry: String, msg: String| CatalogError {
            source_name: dir_name.clone(),
            entry,
            msg,
        };
        let listing = std::fs::read_dir(dir)
            .map_err(|e| err("directory".into(), format!("cannot list it: {e}")))?;
        let mut files: Vec<PathBuf> = listing
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        files.sort();
        let default_manifest = dir.join("models.toml");
        let manifest = match manifest {
            Some(m) => Some(m.to_path_buf()),
            None => default_manifest.is_file().then_some(default_manifest),
        };
        let (mut specs, default) = match &manifest {
            Some(m) => read_manifest(m, dir)?,
            None => (Vec::new(), None),
        };
        let listed: Vec<PathBuf> = specs.iter().map(|s| canonical(&s.0.path)).collect();
        for f in files {
            if listed.contains(&canonical(&f)) {
                continue;
            }
            let stem = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !valid_name(&stem) {
                tracing::warn!(file = %f.display(), "skipped: its name is not a valid model id");
                continue;
            }
            specs.push((
                ManifestModel {
                    id: stem,
                    path: f,
                    aliases: Vec::new(),
                    priority: 0,
                    preload: false,
                    pin: false,
                    n_ctx: None,
                    max_batch_size: None,
                    max_batch_tokens: None,
                    queue_depth: None,
                    kv_pool_bytes: None,
                    chat_template: None,
                    depends_on: Vec::new(),
                },
                dir_name.clone(),
            ));
        }
        build(
            specs,
            default,
            &manifest.map_or(dir_name, |m| m.display().to_string()),
        )
    }

    /// Parses a manifest held in memory (paths relative to `dir`); for tests and tools.
    pub fn from_manifest_text(text: &str, dir: &Path) -> Result<Catalog, CatalogError> {
        let label = dir.join("models.toml").display().to_string();
        let (specs, default) = parse_manifest(text, dir, &label)?;
        build(specs, default, &label)
    }

    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The index of the model a request names (id or alias).
    pub fn lookup(&self, name: &str) -> Option<usize> {
        self.names.get(name).copied()
    }

    /// The model of requests that name none.
    pub fn default_index(&self) -> Option<usize> {
        self.default
    }

    /// Indices of the preload models, highest priority first (ties: catalog order), each
    /// after its dependencies.
    pub fn preload_order(&self) -> Vec<usize> {
        let mut pre: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].preload || Some(i) == self.default)
            .collect();
        pre.sort_by_key(|&i| std::cmp::Reverse(self.entries[i].priority));
        pre
    }

    /// `i` and every model it depends on, transitively, dependencies first.
    pub fn with_dependencies(&self, i: usize) -> Vec<usize> {
        let mut out = Vec::new();
        self.visit_deps(i, &mut out);
        out
    }

    fn visit_deps(&self, i: usize, out: &mut Vec<usize>) {
        if out.contains(&i) {
            return;
        }
        for &d in &self.entries[i].depends_on {
            self.visit_deps(d, out);
        }
        out.push(i);
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

type Spec = (ManifestModel, String);

fn read_manifest(path: &Path, dir: &Path) -> Result<(Vec<Spec>, Option<String>), CatalogError> {
    let label = path.display().to_string();
    let err = |msg: String| CatalogError {
        source_name: label.clone(),
        entry: "file".into(),
        msg,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| err(format!("cannot read it: {e}")))?
        .len();
    if len > MANIFEST_BYTES_MAX {
        return Err(err(format!(
            "{len} bytes; at most {MANIFEST_BYTES_MAX} are read"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    parse_manifest(&text, dir, &label)
}

fn parse_manifest(
    text: &str,
    dir: &Path,
    label: &str,
) -> Result<(Vec<Spec>, Option<String>), CatalogError> {
    let m: Manifest = toml::from_str(text).map_err(|e| {
        // toml's message names the key; its span says which [[model]] table.
        let entry = e
            .span()
            .map(|s| {
                let n = text[..s.start.min(text.len())].matches("[[model]]").count();
                if n == 0 {
                    "top level".to_string()
                } else {
                    format!("model #{n}")
                }
            })
            .unwrap_or_else(|| "file".into());
        CatalogError {
            source_name: label.to_string(),
            entry,
            msg: e.message().to_string(),
        }
    })?;
    let specs = m
        .model
        .into_iter()
        .map(|mut s| {
            if s.path.is_relative() {
                s.path = dir.join(&s.path);
            }
            (s, label.to_string())
        })
        .collect();
    Ok((specs, m.default))
}

/// Validates the entries and resolves names and dependencies.
fn build(specs: Vec<Spec>, default: Option<String>, label: &str) -> Result<Catalog, CatalogError> {
    let err = |entry: String, msg: String| CatalogError {
        source_name: label.to_string(),
        entry,
        msg,
    };
    if specs.len() > CATALOG_MODELS_MAX {
        return Err(err(
            "catalog".into(),
            format!("{} models; at most {CATALOG_MODELS_MAX}", specs.len()),
        ));
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, (s, _)) in specs.iter().enumerate() {
        let entry = format!("model '{}'", s.id);
        for name in std::iter::once(&s.id).chain(&s.aliases) {
            if !valid_name(name) {
                return Err(err(
                    entry,
                    format!(
                        "'{name}' is not a valid model name (1 to {MODEL_ID_BYTES_MAX} letters, \
                         digits, '.', '_', '-', ':'; not starting with '.')"
                    ),
                ));
            }
            if let Some(&j) = names.get(name) {
                return Err(err(
                    entry,
                    format!(
                        "'{name}' is already the id or an alias of model '{}'",
                        specs[j].0.id
                    ),
                ));
            }
            names.insert(name.clone(), i);
        }
    }
    let mut entries = Vec::with_capacity(specs.len());
    for (s, _) in &specs {
        let entry = format!("model '{}'", s.id);
        let file_bytes = file_size(&s.path)
            .map_err(|e| err(entry.clone(), format!("file {}: {e}", s.path.display())))?;
        let positive = [
            ("n_ctx", s.n_ctx),
            ("max_batch_size", s.max_batch_size),
            ("max_batch_tokens", s.max_batch_tokens),
            ("queue_depth", s.queue_depth),
        ];
        if let Some((k, _)) = positive.iter().find(|(_, v)| *v == Some(0)) {
            return Err(err(entry, format!("{k} must be at least 1")));
        }
        let mut depends_on = Vec::new();
        for d in &s.depends_on {
            match names.get(d) {
                Some(&j) if specs[j].0.id == s.id => {
                    return Err(err(entry, "depends on itself".into()))
                }
                Some(&j) if !depends_on.contains(&j) => depends_on.push(j),
                Some(_) => {}
                None => {
                    return Err(err(
                        entry,
                        format!("depends_on '{d}', which is not in the catalog"),
                    ))
                }
            }
        }
        entries.push(ModelEntry {
            id: s.id.clone(),
            path: s.path.clone(),
            aliases: s.aliases.clone(),
            priority: s.priority,
            preload: s.preload,
            pin: s.pin,
            limits: ModelLimits {
                n_ctx: s.n_ctx,
                max_batch_size: s.max_batch_size,
                max_batch_tokens: s.max_batch_tokens,
                queue_depth: s.queue_depth,
                kv_pool_bytes: s.kv_pool_bytes,
            },
            chat_template: s.chat_template.clone(),
            depends_on,
            file_bytes,
        });
    }
    if let Some(cycle) = find_cycle(&entries) {
        let path: Vec<&str> = cycle.iter().map(|&i| entries[i].id.as_str()).collect();
        return Err(err(
            format!("model '{}'", path[0]),
            format!("dependency cycle: {}", path.join(" -> ")),
        ));
    }
    let default = match default {
        Some(d) => Some(*names.get(&d).ok_or_else(|| {
            err(
                "top level".into(),
                format!("default '{d}' is not in the catalog"),
            )
        })?),
        None if entries.len() == 1 => Some(0),
        None => (0..entries.len())
            .filter(|&i| entries[i].preload)
            .max_by_key(|&i| (entries[i].priority, std::cmp::Reverse(i))),
    };
    Ok(Catalog {
        entries,
        names,
        default,
    })
}

/// A dependency cycle as a path that starts and ends at the same model, if there is one.
fn find_cycle(entries: &[ModelEntry]) -> Option<Vec<usize>> {
    // 0 = unvisited, 1 = on the stack, 2 = done.
    fn dfs(
        i: usize,
        e: &[ModelEntry],
        mark: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[i] = 1;
        stack.push(i);
        for &d in &e[i].depends_on {
            if mark[d] == 1 {
                let start = stack.iter().position(|&x| x == d).expect("on the stack");
                let mut c = stack[start..].to_vec();
                c.push(d);
                return Some(c);
            }
            if mark[d] == 0 {
                if let Some(c) = dfs(d, e, mark, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        mark[i] = 2;
        None
    }
    let mut mark = vec![0u8; entries.len()];
    for i in 0..entries.len() {
        if mark[i] == 0 {
            if let Some(c) = dfs(i, entries, &mut mark, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// Quantization name of a file: llama.cpp's `general.file_type` name, else the type holding
/// the most tensor bytes.
pub fn quantization_name(file: &crate::gguf::GgufFile) -> String {
    const FILE_TYPES: &[(u32, &str)] = &[
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (7, "Q8_0"),
        (8, "Q5_0"),
        (9, "Q5_1"),
        (10, "Q2_K"),
        (11, "Q3_K_S"),
        (12, "Q3_K_M"),
        (13, "Q3_K_L"),
        (14, "Q4_K_S"),
        (15, "Q4_K_M"),
        (16, "Q5_K_S"),
        (17, "Q5_K_M"),
        (18, "Q6_K"),
        (32, "BF16"),
    ];
    if let Ok(Some(ft)) = file.metadata().get_u32("general.file_type") {
        if let Some((_, n)) = FILE_TYPES.iter().find(|(id, _)| *id == ft) {
            return (*n).to_string();
        }
    }
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for t in file.tensors() {
        *by_type.entry(t.ty.to_string()).or_default() += t.n_bytes;
    }
    by_type
        .into_iter()
        .max_by_key(|(_, b)| *b)
        .map_or_else(|| "unknown".into(), |(t, _)| t.to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[&str]) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "ryz-catalog-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for f in files {
            std::fs::write(d.join(f), b"GGUF").unwrap();
        }
        d
    }

    fn manifest_err(files: &[&str], text: &str) -> CatalogError {
        let d = dir_with(files);
        let e = Catalog::from_manifest_text(text, &d).unwrap_err();
        let _ = std::fs::remove_dir_all(&d);
        e
    }

    #[test]
    fn a_directory_lists_its_gguf_files_and_the_manifest_names_them() {
        let d = dir_with(&["a.gguf", "b.gguf", "notes.txt"]);
        std::fs::write(
            d.join("models.toml"),
            "default = \"big\"\n[[model]]\nid = \"big\"\npath = \"b.gguf\"\naliases = [\"B\"]\n\
             priority = 5\npreload = true\nn_ctx = 512\ndepends_on = [\"a\"]\n",
        )
        .unwrap();
        let c = Catalog::from_dir(&d, None).expect("valid");
        let ids: Vec<&str> = c.entries().iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            ["big", "a"],
            "manifest first; b.gguf is not listed twice"
        );
        assert_eq!(c.lookup("B"), Some(0));
        assert_eq!(c.lookup("a"), Some(1));
        assert_eq!(c.lookup("../a"), None);
        assert_eq!(c.default_index(), Some(0));
        assert_eq!(c.entries()[0].limits.n_ctx, Some(512));
        assert_eq!(c.entries()[0].depends_on, [1]);
        assert_eq!(c.with_dependencies(0), [1, 0]);
        assert_eq!(c.entries()[0].file_bytes, 4);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn manifest_errors_name_the_entry() {
        let e = manifest_err(
            &["a.gguf"],
            "[[model]]\nid = \"a\"\npath = \"a.gguf\"\nprio = 1\n",
        );
        assert_eq!(e.entry, "model #1");
        assert!(e.msg.contains("prio"), "{e}");
        let e = manifest_err(&[], "[[model]]\nid = \"x\"\npath = \"missing.gguf\"\n");
        assert_eq!(e.entry, "model 'x'");
        assert!(e.msg.contains("missing.gguf"), "{e}");
        let two =
            "[[model]]\nid = \"a\"\npath = \"a.gguf\"\n[[model]]\nid = \"b\"\npath = \"a.gguf\"\n";
        let e = manifest_err(&["a.gguf"], &two.replace("\"b\"", "\"a\""));
        assert_eq!(e.entry, "model 'a'");
        assert!(e.msg.contains("already"), "{e}");
        let e = manifest_err(
            &["a.gguf"],
            &two.replace("id = \"b\"", "id = \"b\"\naliases = [\"a\"]"),
        );
        assert_eq!(e.entry, "model 'b'");
        let e = manifest_err(&["a.gguf"], &two.replace("id = \"b\"", "id = \"../etc\""));
        assert!(e.msg.contains("not a valid model name"), "{e}");
        let e = manifest_err(
            &["a.gguf"],
            &two.replace("id = \"b\"", "id = \"b\"\ndepends_on = [\"zz\"]"),
        );
        assert_eq!(
            (e.entry.as_str(), e.msg.contains("zz")),
            ("model 'b'", true),
            "{e}"
        );
        let cyc = two
            .replace("id = \"a\"", "id = \"a\"\ndepends_on = [\"b\"]")
            .replace("id = \"b\"", "id = \"b\"\ndepends_on = [\"a\"]");
        let e = manifest_err(&["a.gguf"], &cyc);
        assert!(e.msg.contains("cycle: a -> b -> a"), "{e}");
        let e = manifest_err(&["a.gguf"], "default = \"q\"\n");
        assert_eq!(e.entry, "top level");
        let e = manifest_err(
            &["a.gguf"],
            "[[model]]\nid = \"a\"\npath = \"a.gguf\"\nn_ctx = 0\n",
        );
        assert!(e.msg.contains("n_ctx"), "{e}");
    }

    #[test]
    fn preload_order_is_by_priority() {
        let d = dir_with(&["a.gguf", "b.gguf", "c.gguf"]);
        let text = "[[model]]\nid = \"a\"\npath = \"a.gguf\"\npreload = true\npriority = 1\n\
                    [[model]]\nid = \"b\"\npath = \"b.gguf\"\n\
                    [[model]]\nid = \"c\"\npath = \"c.gguf\"\npreload = true\npriority = 9\n";
        let c = Catalog::from_manifest_text(text, &d).expect("valid");
        assert_eq!(c.preload_order(), [2, 0]);
        assert_eq!(c.default_index(), Some(2), "highest-priority preload model");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn names_that_could_be_paths_are_invalid() {
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b", "a\\b", "a%2f"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        for good in ["gemma-3-270m-q4_k_m", "llama3:8b", "Qwen2.5_0.5B"] {
            assert!(valid_name(good), "{good:?}");
        }
    }
}
