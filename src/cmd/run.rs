use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Kernel image: bzImage or ELF vmlinux.
    #[arg(long)]
    pub kernel: std::path::PathBuf,
}

pub fn exec(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`kiln run` is not implemented yet")
}
