//! `kiln img check FILE [-r leaks|all] [--output human|json | --json]`: like
//! `qemu-img check`, with its messages, JSON field names and exit codes: 0 no errors,
//! 2 corruptions, 3 leaked clusters only, 63 a format with nothing to check (raw), 1
//! the check could not run.
//! After a repair the codes describe the image as repaired.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_devices::block::check::{check_image, CheckOptions, CheckOutcome, Findings, Qcow2Check};
use kiln_devices::block::qcow2::refcheck::{Mismatch, RefcountScan};
use kiln_devices::block::qcow2::repair::{RepairMode, Repaired};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Image file.
    file: PathBuf,
    /// Print JSON (field names as `qemu-img check --output=json`); as --output json.
    #[arg(long, conflicts_with = "output")]
    json: bool,
    /// human: qemu-img's text; json: its JSON.
    #[arg(long, value_enum, default_value = "human")]
    output: super::Output,
    /// Check even while another process writes the image (its metadata may change
    /// under the count).
    #[arg(short = 'U', long, conflicts_with = "repair")]
    force_share: bool,
    /// Repair leaked clusters (leaks), or also refcounts too small and COPIED flags,
    /// rebuilding missing or broken refcount structures (all). Either then clears the dirty and corrupt flags if no corruption is left.
    /// Back the image up first.
    #[arg(short = 'r', long, value_name = "leaks|all", value_parser = parse_repair)]
    repair: Option<RepairMode>,
}

fn parse_repair(s: &str) -> Result<RepairMode, String> {
    match s {
        "leaks" => Ok(RepairMode::Leaks),
        "all" => Ok(RepairMode::All),
        other => Err(format!("{other:?}: expected leaks or all")),
    }
}

const EXIT_CORRUPT: u8 = 2;
const EXIT_LEAKS: u8 = 3;
const EXIT_UNSUPPORTED: u8 = 63;

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let options = CheckOptions {
        force_share: args.force_share,
        repair: args.repair,
    };
    let outcome = check_image(&args.file, options)
        .with_context(|| format!("cannot check {}", args.file.display()))?;
    let check = match outcome {
        CheckOutcome::Qcow2(check) => check,
        CheckOutcome::Unsupported(format) => {
            eprintln!(
                "kiln: {}: {format} images have no metadata to check",
                args.file.display()
            );
            return Ok(ExitCode::from(EXIT_UNSUPPORTED));
        }
    };
    let (corruptions, leaks) = match &check.findings {
        Findings::Counted(scan) => (corruptions(scan), scan.leaks.len() as u64),
        Findings::BadMetadata(_) => (1, 0),
    };
    if args.json || matches!(args.output, super::Output::Json) {
        println!("{}", serde_json::to_string_pretty(&to_json(&check))?);
    } else {
        print!("{}", to_text(&check));
    }
    Ok(if corruptions > 0 {
        ExitCode::from(EXIT_CORRUPT)
    } else if leaks > 0 {
        ExitCode::from(EXIT_LEAKS)
    } else {
        ExitCode::SUCCESS
    })
}

fn to_json(c: &Qcow2Check) -> serde_json::Value {
    let mut v = json!({
        "filename": c.filename.to_string_lossy(),
        "format": "qcow2",
        "check-errors": 0,
        "total-clusters": c.total_clusters,
    });
    if let Some(r) = &c.repaired {
        v["leaks-fixed"] = json!(r.leaks_fixed);
        v["corruptions-fixed"] = json!(r.corruptions_fixed);
        if !r.unfixable.is_empty() {
            v["unfixable"] = json!(r.unfixable);
        }
        // kiln's own: whether the image is clean again (qemu-img says nothing).
        v["refcounts-rebuilt"] = json!(r.refcounts_rebuilt);
        v["dirty-flag-cleared"] = json!(r.dirty_cleared);
        v["corrupt-flag-cleared"] = json!(r.corrupt_cleared);
    }
    match &c.findings {
        Findings::Counted(scan) => {
            v["corruptions"] = json!(corruptions(scan));
            v["leaks"] = json!(scan.leaks.len());
            v["allocated-clusters"] = json!(scan.allocated_clusters);
            v["image-end-offset"] = json!(scan.image_end_offset);
        }
        Findings::BadMetadata(e) => {
            v["corruptions"] = json!(1);
            v["leaks"] = json!(0);
            v["error"] = json!(e.to_string());
        }
    }
    v
}

fn to_text(c: &Qcow2Check) -> String {
    let mut out = c.repaired.as_ref().map(repair_text).unwrap_or_default();
    out += &findings_text(c);
    out
}

/// qemu-img check's account of a repair, before the second check.
fn repair_text(r: &Repaired) -> String {
    let mut out = String::new();
    for why in &r.unfixable {
        out += &format!("Could not repair: {why}\n");
    }
    let fixed = r.leaks_fixed + r.corruptions_fixed > 0;
    if r.refcounts_rebuilt {
        out += "The refcount structures were rebuilt from the L1 and L2 tables.\n";
    }
    if fixed {
        out += &format!(
            "The following inconsistencies were found and repaired:\n\n    \
             {} leaked clusters\n    {} corruptions\n\n",
            r.leaks_fixed, r.corruptions_fixed
        );
    }
    for (cleared, flag) in [(r.dirty_cleared, "dirty"), (r.corrupt_cleared, "corrupt")] {
        if cleared {
            out += &format!("The {flag} flag was cleared.\n");
        }
    }
    if fixed {
        out += "Double checking the fixed image now...\n";
    }
    out
}

fn findings_text(c: &Qcow2Check) -> String {
    let scan = match &c.findings {
        Findings::Counted(scan) => scan,
        Findings::BadMetadata(e) => {
            return format!(
                "ERROR {e}\n\n1 errors were found on the image.\n\
                 Data may be corrupted, or further writes to the image may corrupt it.\n"
            )
        }
    };
    let mut out = String::new();
    let line = |prefix: &str, m: &Mismatch| {
        format!(
            "{prefix} cluster {} refcount={} reference={}\n",
            m.offset / c.cluster_size,
            m.refcount,
            m.references
        )
    };
    for m in &scan.corruptions {
        out += &line("ERROR", m);
    }
    for e in &scan.copied_flag_errors {
        let kind = if e.what == "L2 cluster" {
            "l1_entry"
        } else {
            "l2_entry"
        };
        out += &format!(
            "ERROR OFLAG_COPIED {}: {kind}={:x} refcount={}\n",
            e.what, e.entry, e.refcount
        );
    }
    for m in &scan.leaks {
        out += &line("Leaked", m);
    }
    out += &summary(scan);
    let percent = 100.0 * scan.allocated_clusters as f64 / c.total_clusters.max(1) as f64;
    out += &format!(
        "{}/{} = {percent:.2}% allocated\nImage end offset: {}\n",
        scan.allocated_clusters, c.total_clusters, scan.image_end_offset
    );
    out
}

/// Refcounts too small (or too wide) and wrong COPIED flags.
fn corruptions(scan: &RefcountScan) -> u64 {
    (scan.corruptions.len() + scan.copied_flag_errors.len()) as u64
}

fn summary(scan: &RefcountScan) -> String {
    let (errors, leaks) = (corruptions(scan), scan.leaks.len());
    if errors == 0 && leaks == 0 {
        return "No errors were found on the image.\n".into();
    }
    let mut out = String::new();
    if errors > 0 {
        out += &format!(
            "\n{errors} errors were found on the image.\n\
             Data may be corrupted, or further writes to the image may corrupt it.\n"
        );
    }
    if leaks > 0 {
        out += &format!(
            "\n{leaks} leaked clusters were found on the image.\n\
             This means waste of disk space, but no harm to data.\n"
        );
    }
    out
}
