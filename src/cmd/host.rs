//! `kiln host check`: PASS/WARN/FAIL with a one-line hint per check.

use std::path::PathBuf;
use std::process::ExitCode;

use kiln_vmm::host_check::{all_ok, run_checks, CpuidProbe, HostEnv, KvmFacts};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check that this host can run kiln's VMs. Exit 0 when nothing FAILs.
    Check {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Inspect this root (sysfs, /dev, /proc) instead of `/`, e.g. a container's
        /// view. /dev/kvm is opened under it too.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

pub fn exec(command: Command) -> anyhow::Result<ExitCode> {
    let Command::Check { json, root } = command;
    let env = HostEnv {
        root,
        ..HostEnv::real()
    };
    let kvm = KvmFacts::probe(&env.path("dev/kvm"));
    let checks = run_checks(&env, &kvm, &CpuidProbe::native());
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            println!("{:<4}  {:<24} {}", c.status.to_string(), c.name, c.detail);
            println!("      {:<24} {}", "", c.hint);
        }
    }
    Ok(if all_ok(&checks) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
