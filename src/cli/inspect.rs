//! `ryzanstein inspect MODEL`: metadata and tensor table of a GGUF file.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use ryzanstein::gguf::GgufFile;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The GGUF file.
    model: PathBuf,
    /// Longest rendering of one metadata value, in characters.
    #[arg(long, default_value_t = 120)]
    value_chars_max: usize,
}

pub fn run(a: InspectArgs) -> Result<()> {
    let f = GgufFile::open(&a.model)?;
    let total: u64 = f.tensors().iter().map(|t| t.n_bytes).sum();
    println!("file: {}", f.path().display());
    println!(
        "gguf version: {}, alignment: {}, data offset: {}",
        f.version(),
        f.alignment(),
        f.data_offset()
    );
    println!("metadata: {} entries", f.metadata().len());
    for (key, value) in f.metadata().entries() {
        println!(
            "  {key} ({}) = {}",
            value.value_type().name(),
            value.summary(a.value_chars_max)
        );
    }
    println!("tensors: {}, {} bytes", f.tensors().len(), total);
    println!(
        "  {:<32} {:<5} {:<22} {:>12}",
        "name", "type", "shape", "bytes"
    );
    for t in f.tensors() {
        let shape = format!("{:?}", t.dims);
        println!(
            "  {:<32} {:<5} {:<22} {:>12}",
            t.name,
            t.ty.name(),
            shape,
            t.n_bytes
        );
    }
    Ok(())
}
