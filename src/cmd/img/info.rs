//! `kiln img info [-f FMT] [--backing-chain] [--output human|json | --json] [-U] FILE`:
//! like `qemu-img info`, with its JSON field names.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_devices::block::info::{chain_info, image_info_as, ImageInfo};
use kiln_devices::block::qcow2::bitmaps::Bitmap;
use kiln_devices::block::qcow2::snapshots::Snapshot;
use kiln_devices::block::ImageFormat;
use serde_json::{json, Map, Value};

use super::Output;

#[derive(clap::Args)]
pub struct Args {
    /// Image file.
    file: PathBuf,
    /// The image's format (detected from its contents when not given).
    #[arg(short = 'f', long = "format", value_parser = super::parse_format)]
    format: Option<ImageFormat>,
    /// Print JSON (field names as `qemu-img info --output=json`); as --output json.
    #[arg(long, conflicts_with = "output")]
    json: bool,
    /// human: qemu-img's text; json: its JSON.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
    /// Show every image of the backing chain too, top first (a JSON array).
    #[arg(long)]
    backing_chain: bool,
    /// Accepted for qemu-img's sake: kiln reads the headers without locking, so images
    /// others are writing can always be inspected.
    #[arg(short = 'U', long)]
    force_share: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let context = || format!("cannot inspect {}", args.file.display());
    // The chain only when asked for: an image whose backing file is missing can
    // still be inspected.
    let chain = if args.backing_chain {
        chain_info(&args.file, args.format).with_context(context)?
    } else {
        vec![image_info_as(&args.file, args.format).with_context(context)?]
    };
    let json = args.json || matches!(args.output, Output::Json);
    match (json, args.backing_chain) {
        (true, false) => println!("{}", serde_json::to_string_pretty(&to_json(&chain[0]))?),
        (true, true) => {
            let all: Vec<Value> = chain.iter().map(to_json).collect();
            println!("{}", serde_json::to_string_pretty(&all)?)
        }
        // Images apart by a blank line, as qemu-img prints them.
        (false, _) => {
            let texts: Vec<String> = chain.iter().map(to_text).collect();
            print!("{}", texts.join("\n"))
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json(i: &ImageInfo) -> Value {
    let mut m = Map::new();
    m.insert("filename".into(), json!(i.filename.to_string_lossy()));
    m.insert("format".into(), json!(i.format_name));
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

/// A size as qemu-img prints it: three significant digits of the largest binary unit
/// in which it stays below 1000 ("3.32 MiB", "0.977 KiB", "44 KiB").
fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    // The unit switches once the number reaches 1000 of it, not 1024.
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes as f64 >= 1000.0 * (1u64 << (10 * unit)) as f64 {
        unit += 1;
    }
    let value = bytes as f64 / (1u64 << (10 * unit)) as f64;
    format!("{} {}", three_significant(value), UNITS[unit])
}

/// `value` (below 1000) with three significant digits, trailing zeros dropped, as C's
/// "%0.3g" prints it.
fn three_significant(value: f64) -> String {
    let decimals = match value {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        v if v >= 1.0 || v == 0.0 => 2,
        _ => 3,
    };
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn to_text(i: &ImageInfo) -> String {
    let mut s = format!(
        "image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
        i.filename.display(),
        i.format_name,
        human(i.virtual_size),
        i.virtual_size,
        human(i.actual_size)
    );
    if let Some(cs) = i.cluster_size {
        s += &format!("cluster_size: {cs}\n");
    }
    if let Some(b) = &i.backing_filename {
        s += &format!("backing file: {b}");
        // Only where the name is not already the path, as qemu-img does.
        match &i.full_backing_filename {
            Some(full) if full.as_os_str() != b.as_str() => {
                s += &format!(" (actual path: {})\n", full.display())
            }
            _ => s += "\n",
        }
    }
    if let Some(f) = &i.backing_format {
        s += &format!("backing file format: {f}\n");
    }
    if let Some(q) = &i.qcow2 {
        s += &format!(
            "Format specific information:\n    compat: {}\n    compression type: {}\n",
            q.compat, q.compression_type
        );
        // Version 2 has no feature bits: qemu-img leaves out what they would say.
        if q.compat == "0.10" {
            s += &format!("    refcount bits: {}\n", q.refcount_bits);
        } else {
            s += &format!(
                "    lazy refcounts: {}\n{}    refcount bits: {}\n    corrupt: {}\n    \
                 extended l2: {}\n",
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
        }
        if i.dirty {
            s += "    dirty: true (repair with `kiln img check -r all`)\n";
        }
    }
    if !i.snapshots.is_empty() {
        s += &snapshots_text(&i.snapshots);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_print_as_qemu_img_prints_them() {
        for (bytes, text) in [
            (0, "0 B"),
            (512, "512 B"),
            (999, "999 B"),
            (1000, "0.977 KiB"),
            (45056, "44 KiB"),
            (3_477_504, "3.32 MiB"),
            (1 << 30, "1 GiB"),
            (10 << 30, "10 GiB"),
            (1_048_576_000, "0.977 GiB"),
            ((1 << 30) - 1, "1 GiB"),
            (150 << 40, "150 TiB"),
        ] {
            assert_eq!(human(bytes), text, "{bytes}");
        }
    }
}
