//! `kiln bench`: kiln and its peer measured side by side in one run.

use std::process::ExitCode;

mod blk;
mod start;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Process start to the guest's first I/O exit, against QEMU microvm.
    Start(start::Args),
    /// Block I/O throughput against `qemu-img bench`.
    Blk(blk::Args),
}

pub fn exec(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Start(args) => start::exec(args),
        Command::Blk(args) => blk::exec(args),
    }
}
