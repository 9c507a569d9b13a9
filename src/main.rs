//! The `ryzanstein` binary: argument parsing and the commands. Errors end here as one line on
//! stderr and a non-zero exit.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
