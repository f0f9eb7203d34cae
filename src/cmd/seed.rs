use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Placeholder until this subcommand lands.
    Todo,
}

pub fn exec(_command: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`kiln seed` is not implemented yet")
}
