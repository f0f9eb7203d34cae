//! `kiln img info FILE [--json]`: like `qemu-img info`, with its JSON field names.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_devices::block::info::{image_info, ImageInfo};
use kiln_devices::block::qcow2::bitmaps::Bitmap;
use kiln_devices::block::qcow2::snapshots::Snapshot;
use serde_json::{json, Map, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Image file.
    file: PathBuf,
    /// Print JSON (field names as `qemu-img info --output=json`).
    #[arg(long)]
    json: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let info = image_info(&args.file)
        .with_context(|| format!("cannot inspect {}", args.file.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&info))?);
    } else {
        print!("{}", to_text(&info));
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json(i: &ImageInfo) -> Value {
    let mut m = Map::new();
    m.insert("filename".into(), json!(i.filename.to_string_lossy()));
    m.insert("format".into(), json!(i.format.name()));
    m.insert("virtual-size".into(), json!(i.virtual_size));
    m.insert("actual-size".into(), json!(i.actual_size));
    m.insert("dirty-flag".into(), json!(i.dirty));
    if let Some(cs) = i.cluster_size {
        m.insert("cluster-size".into(), json!(cs));
    }
    if let Some(b) = &i.backing_filename {
        m.insert("backing-filename".into(), json!(b));
    }
    if let Some(b) = &i.full_backing_filename {
        m.insert("full-backing-filename".into(), json!(b.to_string_lossy()));
    }
    if let Some(f) = &i.backing_format {
        m.insert("backing-filename-format".into(), json!(f));
    }
    if let Some(q) = &i.qcow2 {
        let mut data = json!({
            "compat": q.compat,
            "refcount-bits": q.refcount_bits,
            "compression-type": q.compression_type,
        });
        // Version 2 has no feature bits; qemu-img leaves these out for it too.
        if q.compat != "0.10" {
            data["corrupt"] = json!(q.corrupt);
            data["extended-l2"] = json!(q.extended_l2);
            data["lazy-refcounts"] = json!(q.lazy_refcounts);
        }
        if let Some(d) = &q.data_file {
            data["data-file"] = json!(d);
        }
        if !i.bitmaps.is_empty() {
            let list: Vec<Value> = i
                .bitmaps
                .iter()
                .map(|b| json!({"name": b.name, "granularity": b.granularity, "flags": b.flag_names()}))
                .collect();
            data["bitmaps"] = Value::Array(list);
        }
        m.insert(
            "format-specific".into(),
            json!({"type": "qcow2", "data": data}),
        );
        if !i.snapshots.is_empty() {
            m.insert("snapshots".into(), snapshots_json(&i.snapshots));
        }
    }
    Value::Object(m)
}

/// As `qemu-img info` lists them under "Format specific information".
fn bitmaps_text(bitmaps: &[Bitmap]) -> String {
    if bitmaps.is_empty() {
        return String::new();
    }
    let mut s = String::from("    bitmaps:\n");
    for (i, b) in bitmaps.iter().enumerate() {
        s += &format!("        [{i}]:\n            flags:\n");
        for (j, flag) in b.flag_names().iter().enumerate() {
            s += &format!("                [{j}]: {flag}\n");
        }
        s += &format!(
            "            name: {}\n            granularity: {}\n",
            b.name, b.granularity
        );
    }
    s
}

/// As `qemu-img info --output=json` lists them.
fn snapshots_json(snapshots: &[Snapshot]) -> Value {
    let list = snapshots.iter().map(|s| {
        let mut v = json!({
            "id": s.id,
            "name": s.name,
            "vm-state-size": s.vm_state_size,
            "date-sec": s.date_sec,
            "date-nsec": s.date_nsec,
            "vm-clock-sec": s.vm_clock_nsec / 1_000_000_000,
            "vm-clock-nsec": s.vm_clock_nsec % 1_000_000_000,
        });
        if let Some(icount) = s.icount {
            v["icount"] = json!(icount);
        }
        v
    });
    Value::Array(list.collect())
}

/// The snapshot table of `qemu-img info` (dates in UTC).
fn snapshots_text(snapshots: &[Snapshot]) -> String {
    let mut s = format!(
        "Snapshot list:\n{:<9} {:<17} {:>7} {:>19} {:>12} {:>10}\n",
        "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT"
    );
    for snap in snapshots {
        let clock_ms = snap.vm_clock_nsec / 1_000_000;
        let clock = format!(
            "{:02}:{:02}:{:02}.{:03}",
            clock_ms / 3_600_000,
            clock_ms / 60_000 % 60,
            clock_ms / 1000 % 60,
            clock_ms % 1000
        );
        let icount = snap.icount.map(|n| n.to_string()).unwrap_or_default();
        s += &format!(
            "{:<9} {:<17} {:>7} {:>19} {:>12} {:>10}\n",
            snap.id,
            snap.name,
            human(snap.vm_state_size),
            utc_date(snap.date_sec),
            clock,
            icount
        );
    }
    s
}

/// "YYYY-MM-DD HH:MM:SS" of a Unix time, in UTC (days to civil date: Howard
/// Hinnant's algorithm).
fn utc_date(secs: u32) -> String {
    let (days, rem) = (i64::from(secs) / 86_400, i64::from(secs) % 86_400);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.3} {}", UNITS[u]).replace(".000 ", " ")
    }
}

fn to_text(i: &ImageInfo) -> String {
    let mut s = format!(
        "image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
        i.filename.display(),
        i.format,
        human(i.virtual_size),
        i.virtual_size,
        human(i.actual_size)
    );
    if let Some(cs) = i.cluster_size {
        s += &format!("cluster_size: {cs}\n");
    }
    if let Some(b) = &i.backing_filename {
        let full = i
            .full_backing_filename
            .as_ref()
            .map(|p| p.display().to_string());
        s += &format!(
            "backing file: {b} (actual path: {})\n",
            full.unwrap_or_default()
        );
    }
    if let Some(f) = &i.backing_format {
        s += &format!("backing file format: {f}\n");
    }
    if let Some(q) = &i.qcow2 {
        s += &format!(
            "Format specific information:\n    compat: {}\n    compression type: {}\n    \
             lazy refcounts: {}\n{}    refcount bits: {}\n    corrupt: {}\n    extended l2: {}\n",
            q.compat,
            q.compression_type,
            q.lazy_refcounts,
            bitmaps_text(&i.bitmaps),
            q.refcount_bits,
            if q.corrupt {
                "true (repair with `kiln img check -r all`)"
            } else {
                "false"
            },
            q.extended_l2
        );
        if i.dirty {
            s += "    dirty: true (repair with `kiln img check -r all`)\n";
        }
    }
    if !i.snapshots.is_empty() {
        s += &snapshots_text(&i.snapshots);
    }
    s
}
