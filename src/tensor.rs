//! A typed view of one weight tensor of a GGUF file: its ggml type, its shape and where its
//! bytes are. It picks the kernel, so model code never sees a block layout.
//!
//! A view holds a byte range, not a borrow: the model owns the file (`Arc<GgufFile>`) and passes
//! its bytes in, which keeps models free of self-referential lifetimes.

use std::ops::Range;

use crate::gguf::{GgufError, GgufErrorKind, GgufFile};
use crate::kernels::{self, GgmlType};

/// A 1-D or 2-D weight tensor: `n_rows` rows of `row_len` elements.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub ty: GgmlType,
    /// Elements per row (`ne0`): the input width of a matmul.
    pub row_len: usize,
    /// Rows (`ne1`): the output width of a matmul.
    pub n_rows: usize,
    range: Range<usize>,
}

impl Tensor {
    /// Looks up `name` and checks that its shape is `[row_len, n_rows]` (`n_rows` 1 for a
    /// vector). A missing tensor or a wrong shape is an error naming the tensor.
    pub fn load(
        file: &GgufFile,
        name: &str,
        row_len: usize,
        n_rows: usize,
    ) -> Result<Tensor, GgufError> {
        let info = file
            .tensor(name)
            .ok_or_else(|| file.error(format!("tensor '{name}'"), GgufErrorKind::Missing))?;
        let n_info_rows = info.n_rows();
        let shape_ok = info.row_len() == row_len && n_info_rows == n_rows && info.dims.len() <= 2;
        if !shape_ok {
            let why = format!("shape {:?}, expected [{row_len}, {n_rows}]", info.dims);
            return Err(file.error(format!("tensor '{name}'.dims"), GgufErrorKind::Invalid(why)));
        }
        let start = (file.data_offset() + info.offset) as usize;
        Ok(Tensor {
            name: name.to_string(),
            ty: info.ty,
            row_len,
            n_rows,
            range: start..start + info.n_bytes as usize,
        })
    }

    /// Like [`Tensor::load`], but `None` when the tensor is absent.
    pub fn load_optional(
        file: &GgufFile,
        name: &str,
        row_len: usize,
        n_rows: usize,
    ) -> Result<Option<Tensor>, GgufError> {
        match file.tensor(name) {
            None => Ok(None),
            Some(_) => Tensor::load(file, name, row_len, n_rows).map(Some),
        }
    }

    /// The tensor's bytes within the file's bytes.
    pub fn data<'a>(&self, file_bytes: &'a [u8]) -> &'a [u8] {
        &file_bytes[self.range.clone()]
    }

    pub fn n_bytes(&self) -> usize {
        self.range.len()
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.n_bytes() / self.n_rows
    }

    /// Dequantizes row `row` into `out` (`row_len` floats).
    pub fn dequantize_row(&self, file_bytes: &[u8], row: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        let data = self.data(file_bytes);
        kernels::dequantize_row(self.ty, &data[row * rb..(row + 1) * rb], out);
    }

    /// The whole tensor as f32 (for small tensors such as norm weights, copied at load).
    pub fn to_f32(&self, file_bytes: &[u8]) -> Vec<f32> {
        let mut out = vec![0.0; self.row_len * self.n_rows];
        for (r, chunk) in out.chunks_mut(self.row_len).enumerate() {
            self.dequantize_row(file_bytes, r, chunk);
        }
        out
    }

    /// The activation type inputs to this weight are quantized to.
    pub fn act_type(&self) -> GgmlType {
        self.ty.vec_dot_type()
    }

    /// `out[b][r] = row r · acts[b]` for `n_acts` activation rows already quantized to
    /// [`Tensor::act_type`]; `out` is `[n_acts][n_rows]`.
    pub fn matmul(&self, file_bytes: &[u8], acts: &[u8], n_acts: usize, out: &mut [f32]) {
        let w = self.data(file_bytes);
        kernels::matmul(
            self.ty,
            w,
            self.row_len,
            self.n_rows,
            acts,
            n_acts,
            &mut out[..n_acts * self.n_rows],
        );
    }
}
