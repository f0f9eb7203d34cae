//! `kiln cpu verify`.

use std::process::ExitCode;
use std::time::Duration;

use kiln_vmm::cpu::verify::{explain, verify_on_host};
use kiln_vmm::host_check::HostEnv;

use super::CpuOptions;

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub options: CpuOptions,
    /// Give up on the guest after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

pub fn exec(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.options.host_cpuid.is_none(),
        "--host-cpuid does not apply to verify: the guest runs on this host's KVM"
    );
    let guest = args.options.guest()?;
    let report = verify_on_host(&guest, Duration::from_secs(args.timeout))?;
    for w in &report.programmed.warnings {
        eprintln!("warning: {w}");
    }
    if report.mismatches.is_empty() {
        println!(
            "PASS: the guest sees the CPUID kiln programmed for {} ({} leaves, ring 0 and ring 3)",
            guest.config.model.name, report.leaves
        );
        return Ok(ExitCode::SUCCESS);
    }
    let flavour = HostEnv::real().kvm_flavour();
    print!(
        "{}",
        explain(&report.mismatches, &report.dump, flavour.as_deref())
    );
    Ok(ExitCode::from(1))
}
