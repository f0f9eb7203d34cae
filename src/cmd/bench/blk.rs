use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn exec(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`kiln bench blk` is not implemented yet")
}
