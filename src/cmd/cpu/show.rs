//! `kiln cpu show`.

use std::io::Write;
use std::process::ExitCode;

use kiln_vmm::cpu::{vcpu_cpuid, CpuidEntry};
use serde::Serialize;

use super::CpuOptions;

#[derive(clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub options: CpuOptions,
    /// Which vCPU's table (APIC IDs differ).
    #[arg(long, default_value_t = 0)]
    pub vcpu: u32,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct ShowJson<'a> {
    model: &'a str,
    warnings: &'a [String],
    present: Vec<&'static str>,
    missing: Vec<&'static str>,
    cpuid: Vec<CpuidEntry>,
}

pub fn exec(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let guest = args.options.guest()?;
    let host = args.options.host()?;
    let out = vcpu_cpuid(&host, &guest, args.vcpu)?;
    let present: Vec<&str> = out.present.iter().map(|f| f.name).collect();
    let missing: Vec<&str> = out.missing.iter().map(|f| f.name).collect();
    if args.json {
        let json = ShowJson {
            model: guest.config.model.name,
            warnings: &out.warnings,
            present,
            missing,
            cpuid: out.table.iter().copied().collect(),
        };
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(ExitCode::SUCCESS);
    }
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    let mut text = format!(
        "model: {} ({})\n",
        guest.config.model.name, guest.config.model.source
    );
    text += &format!(
        "{:<10} {:<7} {:<10} {:<10} {:<10} {:<10}\n",
        "LEAF", "SUBLEAF", "EAX", "EBX", "ECX", "EDX"
    );
    for e in out.table.iter() {
        text += &format!(
            "{:#010x} {:<7} {:#010x} {:#010x} {:#010x} {:#010x}\n",
            e.leaf, e.subleaf, e.eax, e.ebx, e.ecx, e.edx
        );
    }
    text += &format!("present: {}\n", present.join(" "));
    text += &format!(
        "requested but missing on this host: {}\n",
        if missing.is_empty() {
            "(none)".to_string()
        } else {
            missing.join(" ")
        }
    );
    // A closed pipe (`| head`) is not an error worth a panic.
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
