//! A bounds-checked cursor over the file bytes. Every length read from the file is checked
//! against a cap and against the bytes left before anything is allocated, so a crafted file
//! can neither panic the reader nor make it allocate more than the file could describe.

use std::path::Path;

use super::error::{GgufError, GgufErrorKind};
use super::value::{Array, Value, ValueType};

/// Longest metadata string (a chat template is tens of KiB; a token a few bytes).
pub const STRING_BYTES_MAX: u64 = 16 << 20;
/// Most elements in one metadata array (vocabularies hold up to a few hundred thousand).
pub const ARRAY_ELEMS_MAX: u64 = 1 << 24;
/// Deepest nesting of arrays inside arrays.
pub const ARRAY_DEPTH_MAX: u32 = 8;

pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8], path: &'a Path) -> Cursor<'a> {
        Cursor {
            bytes,
            pos: 0,
            path,
        }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    pub fn take(&mut self, n: u64, field: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let available = self.remaining();
        if n > available {
            return Err(GgufError::new(
                self.path,
                field(),
                GgufErrorKind::Truncated {
                    needed: n,
                    available,
                },
            ));
        }
        let n = n as usize;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let b = self.take(N as u64, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A u64 count or length, checked against `max` and against what the rest of the file can
    /// hold at `min_elem_bytes` per element.
    pub fn count(
        &mut self,
        max: u64,
        min_elem_bytes: u64,
        field: &dyn Fn() -> String,
    ) -> Result<u64, GgufError> {
        let n = self.u64(field)?;
        if n > max {
            return Err(GgufError::new(
                self.path,
                field(),
                GgufErrorKind::TooLarge { value: n, max },
            ));
        }
        let needed = n.saturating_mul(min_elem_bytes);
        if needed > self.remaining() {
            let available = self.remaining();
            return Err(GgufError::new(
                self.path,
                field(),
                GgufErrorKind::Truncated { needed, available },
            ));
        }
        Ok(n)
    }

    pub fn string(&mut self, max: u64, field: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.count(max, 1, field)?;
        let bytes = self.take(len, field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(GgufError::invalid(
                self.path,
                field(),
                format!("string is not UTF-8 ({e})"),
            )),
        }
    }

    pub fn value_type(&mut self, field: &dyn Fn() -> String) -> Result<ValueType, GgufError> {
        let id = self.u32(field)?;
        ValueType::from_id(id).ok_or_else(|| {
            GgufError::invalid(self.path, field(), format!("unknown value type {id}"))
        })
    }

    pub fn value(
        &mut self,
        ty: ValueType,
        depth: u32,
        field: &dyn Fn() -> String,
    ) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(field)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(field)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(field)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(field)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(field)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(field)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(field)?)),
            ValueType::Bool => Value::Bool(self.bool(field)?),
            ValueType::String => Value::String(self.string(STRING_BYTES_MAX, field)?),
            ValueType::Array => Value::Array(self.array_value(depth + 1, field)?),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(field)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(field)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(field)?)),
        })
    }

    fn bool(&mut self, field: &dyn Fn() -> String) -> Result<bool, GgufError> {
        match self.array::<1>(field)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(GgufError::invalid(
                self.path,
                field(),
                format!("bool byte is {b}, not 0 or 1"),
            )),
        }
    }

    fn array_value(&mut self, depth: u32, field: &dyn Fn() -> String) -> Result<Array, GgufError> {
        if depth > ARRAY_DEPTH_MAX {
            return Err(GgufError::new(
                self.path,
                field(),
                GgufErrorKind::TooLarge {
                    value: depth.into(),
                    max: ARRAY_DEPTH_MAX.into(),
                },
            ));
        }
        let elem = self.value_type(&|| format!("{}.element_type", field()))?;
        let n = self.count(ARRAY_ELEMS_MAX, elem.min_bytes(), &|| {
            format!("{}.count", field())
        })?;
        let n = n as usize; // bounded by ARRAY_ELEMS_MAX
        let at = |i: usize| move || format!("{}[{i}]", field());
        macro_rules! read_vec {
            ($variant:ident, $read:expr) => {{
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push($read(self, &at(i))?);
                }
                Array::$variant(v)
            }};
        }
        type F<'x> = &'x dyn Fn() -> String;
        Ok(match elem {
            ValueType::U8 => Array::U8(self.take(n as u64, field)?.to_vec()),
            ValueType::I8 => Array::I8(
                self.take(n as u64, field)?
                    .iter()
                    .map(|&b| b as i8)
                    .collect(),
            ),
            ValueType::U16 => {
                read_vec!(U16, |c: &mut Self, f: F| c.array(f).map(u16::from_le_bytes))
            }
            ValueType::I16 => {
                read_vec!(I16, |c: &mut Self, f: F| c.array(f).map(i16::from_le_bytes))
            }
            ValueType::U32 => {
                read_vec!(U32, |c: &mut Self, f: F| c.array(f).map(u32::from_le_bytes))
            }
            ValueType::I32 => {
                read_vec!(I32, |c: &mut Self, f: F| c.array(f).map(i32::from_le_bytes))
            }
            ValueType::F32 => {
                read_vec!(F32, |c: &mut Self, f: F| c.array(f).map(f32::from_le_bytes))
            }
            ValueType::Bool => read_vec!(Bool, |c: &mut Self, f: F| c.bool(f)),
            ValueType::String => {
                read_vec!(String, |c: &mut Self, f: F| c.string(STRING_BYTES_MAX, f))
            }
            ValueType::Array => read_vec!(Array, |c: &mut Self, f: F| c.array_value(depth + 1, f)),
            ValueType::U64 => {
                read_vec!(U64, |c: &mut Self, f: F| c.array(f).map(u64::from_le_bytes))
            }
            ValueType::I64 => {
                read_vec!(I64, |c: &mut Self, f: F| c.array(f).map(i64::from_le_bytes))
            }
            ValueType::F64 => {
                read_vec!(F64, |c: &mut Self, f: F| c.array(f).map(f64::from_le_bytes))
            }
        })
    }
}
