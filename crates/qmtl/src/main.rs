//! The `qmtl` command: parse the command line, load settings, run what was asked.

use clap::Parser;
use std::process::ExitCode;

mod cli;
mod demo;
mod settings;
mod submit;
mod up;

/// mimalloc: the diff path allocates many small strings, and glibc's allocator costs it about
/// a third of its time (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let settings = match settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("qmtl: {:#}", anyhow::Error::new(error));
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("qmtl: could not start the async runtime: {error}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(cli::run(cli.command, settings, cli.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("qmtl: {error:#}");
            ExitCode::FAILURE
        }
    }
}
