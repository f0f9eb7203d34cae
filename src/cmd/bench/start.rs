use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn exec(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`kiln bench start` is not implemented yet")
}
