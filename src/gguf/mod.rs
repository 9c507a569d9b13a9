//! A capped, validated reader of GGUF files (versions 2 and 3) over mmap.
//!
//! Main types: [`GgufFile`] (header, metadata and tensor table of one file, plus its bytes),
//! [`Metadata`] with typed accessors, [`TensorInfo`] (name, type, shape, byte range), and
//! [`GgufError`], which always names the file and the field that was bad.
//!
//! Everything read from the file is checked before use: every length against a cap and the
//! bytes left, every tensor's type, shape, offset and size against the data section. A truncated
//! or corrupt file is an error, never a panic.
//!
//! Boundary: this module knows the container format only — not architectures, not kernels.

mod error;
mod reader;
mod value;
pub mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use error::{GgufError, GgufErrorKind};
pub use reader::{ARRAY_DEPTH_MAX, ARRAY_ELEMS_MAX, STRING_BYTES_MAX};
pub use value::{Array, Value, ValueType};

use crate::kernels::GgmlType;
use reader::Cursor;

/// "GGUF" read as a little-endian u32.
pub const MAGIC: u32 = 0x4655_4747;
/// Most metadata entries in one file.
pub const METADATA_KV_MAX: u64 = 1 << 16;
/// Most tensors in one file.
pub const TENSORS_MAX: u64 = 1 << 16;
/// Most dimensions of one tensor (ggml's GGML_MAX_DIMS).
pub const TENSOR_DIMS_MAX: u32 = 4;
/// Longest tensor name in bytes (ggml keeps 64; we allow some slack).
pub const TENSOR_NAME_BYTES_MAX: u64 = 256;
/// Longest metadata key in bytes.
pub const KEY_BYTES_MAX: u64 = 1 << 16;
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest `general.alignment` we accept.
pub const ALIGNMENT_MAX: u64 = 1 << 20;

/// The metadata of one file, in file order, with a lookup by key.
#[derive(Debug, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    /// The file, for error messages from the typed accessors.
    path: PathBuf,
}

/// One tensor of the table: where its bytes are and how to read them.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// `dims[0]` is the innermost (contiguous) dimension, as in ggml (`ne0`).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the first byte from the start of the data section.
    pub offset: u64,
    /// Bytes of the whole tensor.
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Elements in one row (`ne0`).
    pub fn row_len(&self) -> usize {
        self.dims[0] as usize
    }

    /// Number of rows: the product of all dimensions but the first.
    pub fn n_rows(&self) -> usize {
        self.dims[1..].iter().product::<u64>() as usize
    }
}

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// An open GGUF file: parsed header, metadata and tensor table, and the mapped bytes.
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    alignment: u64,
    /// Absolute offset of the tensor data section.
    data_offset: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    backing: Backing,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file, mapping it into memory.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |e| GgufError::new(path, "file", GgufErrorKind::Io(e));
        let file = std::fs::File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.len() == 0 {
            return Err(GgufError::new(
                path,
                "header.magic",
                GgufErrorKind::Truncated {
                    needed: 4,
                    available: 0,
                },
            ));
        }
        // SAFETY: the map is read-only. Another process truncating or rewriting the file while
        // it is mapped is outside what we can guard against (documented in OPERATIONS); deleting
        // or replacing it by rename is safe on Unix.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Backing::Mmap(mmap))
    }

    /// Parses a GGUF image held in memory; `label` stands for the path in error messages.
    pub fn from_bytes(label: impl AsRef<Path>, bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(label.as_ref(), Backing::Owned(bytes))
    }

    fn parse(path: &Path, backing: Backing) -> Result<GgufFile, GgufError> {
        let bytes: &[u8] = match &backing {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        };
        let mut cur = Cursor::new(bytes, path);
        let (version, n_tensors, n_kv) = read_header(&mut cur, path)?;
        let metadata = read_metadata(&mut cur, path, n_kv)?;
        let alignment = read_alignment(&metadata, path)?;
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors as usize {
            tensors.push(read_tensor_info(&mut cur, path, i)?);
        }
        let data_offset = align_up(cur.pos() as u64, alignment);
        let tensor_index =
            check_tensors(&tensors, path, alignment, data_offset, bytes.len() as u64)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
            tensor_index,
            backing,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor of this file (validated at open, so this cannot go out of range).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.bytes()[start..start + info.n_bytes as usize]
    }

    /// An error about this file, for callers that validate what the file holds.
    pub fn error(&self, field: impl Into<String>, kind: GgufErrorKind) -> GgufError {
        GgufError::new(&self.path, field, kind)
    }
}

fn read_header(cur: &mut Cursor, path: &Path) -> Result<(u32, u64, u64), GgufError> {
    let magic = cur.u32(&|| "header.magic".into())?;
    if magic != MAGIC {
        return Err(GgufError::invalid(
            path,
            "header.magic",
            format!("not a GGUF file (magic {magic:#010x}, expected \"GGUF\")"),
        ));
    }
    let version = cur.u32(&|| "header.version".into())?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(GgufError::invalid(
                path,
                "header.version",
                "GGUF v1 is not supported",
            ))
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(GgufError::invalid(
                path,
                "header.version",
                "big-endian GGUF is not supported",
            ))
        }
        v => {
            return Err(GgufError::invalid(
                path,
                "header.version",
                format!("unknown version {v}"),
            ))
        }
    }
    // A tensor-info record takes at least 8 + 4 + 8 + 4 + 8 bytes; a KV record at least 8 + 4 + 1.
    let n_tensors = cur.count(TENSORS_MAX, 32, &|| "header.tensor_count".into())?;
    let n_kv = cur.count(METADATA_KV_MAX, 13, &|| "header.metadata_kv_count".into())?;
    Ok((version, n_tensors, n_kv))
}

fn read_metadata(cur: &mut Cursor, path: &Path, n_kv: u64) -> Result<Metadata, GgufError> {
    let mut md = Metadata {
        path: path.to_path_buf(),
        ..Metadata::default()
    };
    for i in 0..n_kv as usize {
        let key = cur.string(KEY_BYTES_MAX, &|| format!("metadata[{i}].key"))?;
        let field = |key: &str| format!("metadata '{key}'");
        let ty = cur.value_type(&|| format!("{}.type", field(&key)))?;
        let value = cur.value(ty, 0, &|| format!("{}.value", field(&key)))?;
        if md.index.insert(key.clone(), md.entries.len()).is_some() {
            return Err(GgufError::invalid(path, field(&key), "duplicate key"));
        }
        md.entries.push((key, value));
    }
    Ok(md)
}

fn read_alignment(md: &Metadata, path: &Path) -> Result<u64, GgufError> {
    let Some(a) = md.get_u64("general.alignment")? else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    if a == 0 || a % 8 != 0 || a > ALIGNMENT_MAX {
        return Err(GgufError::invalid(
            path,
            "metadata 'general.alignment'",
            format!("{a} is not a non-zero multiple of 8 up to {ALIGNMENT_MAX}"),
        ));
    }
    Ok(a)
}

fn read_tensor_info(cur: &mut Cursor, path: &Path, i: usize) -> Result<TensorInfo, GgufError> {
    let name = cur.string(TENSOR_NAME_BYTES_MAX, &|| format!("tensor[{i}].name"))?;
    let field = |what: &str| format!("tensor '{name}'.{what}");
    let n_dims = cur.u32(&|| field("n_dims"))?;
    if n_dims == 0 || n_dims > TENSOR_DIMS_MAX {
        return Err(GgufError::invalid(
            path,
            field("n_dims"),
            format!("{n_dims} is not in 1..=4"),
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        let dim = cur.u64(&|| field(&format!("dims[{d}]")))?;
        if dim == 0 || dim > i64::MAX as u64 {
            return Err(GgufError::invalid(
                path,
                field(&format!("dims[{d}]")),
                format!("{dim} is not a valid size"),
            ));
        }
        dims.push(dim);
    }
    let type_id = cur.u32(&|| field("type"))?;
    let ty = GgmlType::from_id(type_id)
        .filter(|t| t.is_weight_type())
        .ok_or_else(|| {
            GgufError::invalid(
                path,
                field("type"),
                format!("unsupported ggml type {type_id}"),
            )
        })?;
    let offset = cur.u64(&|| field("offset"))?;
    let n_bytes = tensor_bytes(ty, &dims).ok_or_else(|| {
        GgufError::invalid(
            path,
            field("dims"),
            format!("shape {dims:?} is not valid for type {ty}"),
        )
    })?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_bytes,
    })
}

/// Bytes of a tensor of type `ty` and shape `dims`, or `None` if the row length is not a whole
/// number of blocks or the size overflows.
fn tensor_bytes(ty: GgmlType, dims: &[u64]) -> Option<u64> {
    let row = ty.row_bytes(usize::try_from(dims[0]).ok()?)? as u64;
    dims[1..].iter().try_fold(row, |acc, &d| acc.checked_mul(d))
}

fn check_tensors(
    tensors: &[TensorInfo],
    path: &Path,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
) -> Result<HashMap<String, usize>, GgufError> {
    let mut index = HashMap::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let field = |what: &str| format!("tensor '{}'.{what}", t.name);
        if t.offset % alignment != 0 {
            return Err(GgufError::invalid(
                path,
                field("offset"),
                format!(
                    "{} is not a multiple of the alignment {alignment}",
                    t.offset
                ),
            ));
        }
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(GgufError::invalid(
                    path,
                    field("offset"),
                    format!(
                        "data [{} + {}, {} bytes) runs past the end of the file ({file_len} bytes)",
                        data_offset, t.offset, t.n_bytes
                    ),
                ))
            }
        }
        if index.insert(t.name.clone(), i).is_some() {
            return Err(GgufError::invalid(
                path,
                field("name"),
                "duplicate tensor name",
            ));
        }
    }
    Ok(index)
}

fn align_up(x: u64, a: u64) -> u64 {
    x + (a - x % a) % a
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// All entries in file order.
    pub fn entries(&self) -> &[(String, Value)] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn wrong_type(&self, key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::new(
            &self.path,
            format!("metadata '{key}'"),
            GgufErrorKind::WrongType {
                expected,
                found: v.value_type().name(),
            },
        )
    }

    fn get_int(
        &self,
        key: &str,
        expected: &'static str,
        min: i128,
        max: i128,
    ) -> Result<Option<i128>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.as_int() {
            Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
            Some(x) => Err(GgufError::invalid(
                &self.path,
                format!("metadata '{key}'"),
                format!("{x} is out of range for {expected}"),
            )),
            None => Err(self.wrong_type(key, expected, v)),
        }
    }

    /// An integer key of any integer type that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        Ok(self
            .get_int(key, "u32", 0, u32::MAX.into())?
            .map(|x| x as u32))
    }

    /// An integer key of any integer type that fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        Ok(self
            .get_int(key, "u64", 0, u64::MAX.into())?
            .map(|x| x as u64))
    }

    /// An integer key of any integer type that fits in i64.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>, GgufError> {
        Ok(self
            .get_int(key, "i64", i64::MIN.into(), i64::MAX.into())?
            .map(|x| x as i64))
    }

    /// A float key (f32 or f64, or an integer).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| self.wrong_type(key, "f32", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "bool", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, "string", v)),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&Array>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong_type(key, "array", v)),
        }
    }

    /// A required key: `Missing` error naming it if absent.
    pub fn require<T>(&self, key: &str, v: Result<Option<T>, GgufError>) -> Result<T, GgufError> {
        v?.ok_or_else(|| {
            GgufError::new(
                &self.path,
                format!("metadata '{key}'"),
                GgufErrorKind::Missing,
            )
        })
    }
}
