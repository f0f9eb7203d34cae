//! `kiln cpu`: CPU models, the effective CPUID on this host, and proof from inside
//! a guest of the CPUID it sees.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use kiln_vmm::cpu::{models, CpuidEntry, CpuidTable, CustomTemplate, GuestCpu, Topology};

mod show;
mod verify;

#[derive(clap::Subcommand)]
pub enum Command {
    /// List the named CPU models.
    List,
    /// The effective CPUID table of a model on this host, after filtering and normalization.
    Show(show::ShowArgs),
    /// Features in one model and not the other.
    Diff {
        /// First model, MODEL[,+feat][,-feat].
        a: String,
        /// Second model.
        b: String,
    },
    /// Boot a tiny guest that reads CPUID in ring 0 and ring 3; compare with what kiln
    /// programmed. Exit 0 on a match, 1 with a per-register diff otherwise.
    Verify(verify::VerifyArgs),
    /// Write the CPUID test guest (a PVH ELF) to a file, e.g. to run it under QEMU.
    Guest {
        /// Output file.
        output: PathBuf,
    },
}

pub fn exec(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List => list(),
        Command::Show(args) => show::exec(args),
        Command::Diff { a, b } => diff(&a, &b),
        Command::Verify(args) => verify::exec(args),
        Command::Guest { output } => {
            std::fs::write(&output, kiln_vmm::guests::CPUID_VERIFY)
                .with_context(|| format!("writing {}", output.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Host and guest options shared by show and verify.
#[derive(clap::Args, Clone, Debug)]
pub struct CpuOptions {
    /// MODEL[,+feat][,-feat][,check=none|warn|enforce]
    pub cpu: String,
    /// vCPUs: N[,sockets=S,cores=C,threads=T]
    #[arg(long, default_value = "1")]
    pub cpus: String,
    /// Firecracker custom CPU template (JSON), applied before normalization.
    #[arg(long)]
    pub cpu_template: Option<PathBuf>,
    /// Expose VMX/SVM (only the CPUID side; `kiln run --nested` checks the host).
    #[arg(long)]
    pub nested: bool,
    /// Use this host CPUID table (JSON list of {leaf, subleaf, eax, ebx, ecx, edx})
    /// instead of asking /dev/kvm: for tests and for planning on another machine.
    #[arg(long)]
    pub host_cpuid: Option<PathBuf>,
}

impl CpuOptions {
    pub fn guest(&self) -> anyhow::Result<GuestCpu> {
        let template = match &self.cpu_template {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                Some(CustomTemplate::from_json(&text).with_context(|| format!("{}", p.display()))?)
            }
            None => None,
        };
        Ok(GuestCpu {
            config: self.cpu.parse()?,
            template,
            topology: Some(self.cpus.parse::<Topology>()?),
            nested: self.nested,
        })
    }

    pub fn host(&self) -> anyhow::Result<CpuidTable> {
        match &self.host_cpuid {
            Some(p) => read_table(p),
            None => kvm_supported_cpuid(),
        }
    }
}

pub fn read_table(path: &Path) -> anyhow::Result<CpuidTable> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let entries: Vec<CpuidEntry> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON list of CPUID entries", path.display()))?;
    Ok(CpuidTable::from_entries(entries))
}

/// KVM_GET_SUPPORTED_CPUID on /dev/kvm.
pub fn kvm_supported_cpuid() -> anyhow::Result<CpuidTable> {
    let kvm = kiln_vmm::cpu::open_kvm()?;
    Ok(kiln_vmm::cpu::kvm_supported_cpuid(&kvm)?)
}

fn list() -> anyhow::Result<ExitCode> {
    println!(
        "{:<20} {:<13} {:<11} MODEL-ID",
        "NAME", "VENDOR", "FAM/MOD/ST"
    );
    for m in models::all() {
        if m.passthrough.is_some() {
            println!(
                "{:<20} {:<13} {:<11} ({})",
                m.name, "(host)", "(host)", m.source
            );
        } else {
            let fms = format!("{}/{}/{}", m.family, m.model, m.stepping);
            println!(
                "{:<20} {:<13} {:<11} {}",
                m.name,
                m.vendor,
                fms,
                m.model_id.unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The named features a `--cpu` value asks for (before any host filtering). For
/// host/max this needs the host table.
fn requested(spec: &str) -> anyhow::Result<Vec<&'static str>> {
    let config: kiln_vmm::cpu::CpuConfig = spec.parse()?;
    let host = if config.model.passthrough.is_some() {
        kvm_supported_cpuid()?
    } else {
        CpuidTable::new()
    };
    Ok(
        kiln_vmm::cpu::expand::requested_features(&host, &config, false)
            .into_iter()
            .map(|f| f.name)
            .collect(),
    )
}

fn diff(a: &str, b: &str) -> anyhow::Result<ExitCode> {
    let fa = requested(a)?;
    let fb = requested(b)?;
    let oa: Vec<&str> = fa.iter().filter(|f| !fb.contains(f)).copied().collect();
    let ob: Vec<&str> = fb.iter().filter(|f| !fa.contains(f)).copied().collect();
    println!(
        "only in {a}: {}",
        if oa.is_empty() {
            "(none)".into()
        } else {
            oa.join(" ")
        }
    );
    println!(
        "only in {b}: {}",
        if ob.is_empty() {
            "(none)".into()
        } else {
            ob.join(" ")
        }
    );
    Ok(ExitCode::SUCCESS)
}
