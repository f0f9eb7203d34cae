//! The human-readable build plan `kiln recipe check` prints.

use std::fmt::Write;

use super::model::*;
use super::sysprep;
use super::LoadedRecipe;
use crate::installer::catalog;
use crate::units::{format_size, parse_duration_secs, parse_size};

/// Describes, step by step, what building `loaded` will do.
pub fn plan(loaded: &LoadedRecipe) -> String {
    let r = &loaded.recipe;
    let mut out = String::new();
    let _ = writeln!(out, "recipe {}", loaded.path.display());
    let b = r.base.get_ref();
    let mirror = b
        .mirror
        .as_ref()
        .map(|m| m.get_ref().clone())
        .unwrap_or_else(|| "from the host's apt sources".into());
    let mut step = 0;
    let mut next = || {
        step += 1;
        step
    };
    if let Some(name) = &b.installer {
        let i = catalog::find(name.get_ref());
        let desc = i.map_or("", |i| i.description);
        let _ = writeln!(
            out,
            "{}. base: installer {} ({desc}); mirror {mirror}",
            next(),
            name.get_ref()
        );
    } else if let (Some(k), Some(i)) = (&b.kernel, &b.initrd) {
        let _ = writeln!(
            out,
            "{}. base: installer kernel {} + initrd {}",
            next(),
            loaded.resolve(k.get_ref()).display(),
            loaded.resolve(i.get_ref()).display()
        );
    } else if let Some(iso) = &b.iso {
        let _ = writeln!(
            out,
            "{}. base: installer ISO {}",
            next(),
            loaded.resolve(iso.get_ref()).display()
        );
    } else if let Some(img) = &b.image {
        let _ = writeln!(
            out,
            "{}. base: backing image {}",
            next(),
            loaded.resolve(img.get_ref()).display()
        );
    }
    if let Some(i) = &r.install {
        let answer = i
            .answer
            .as_ref()
            .map(|a| a.get_ref().as_str())
            .unwrap_or_else(|| {
                b.installer
                    .as_ref()
                    .and_then(|n| catalog::find(n.get_ref()))
                    .map_or("preseed", |c| match c.answer {
                        crate::answer::AnswerKind::Preseed => "preseed",
                        crate::answer::AnswerKind::Kickstart => "kickstart",
                    })
            });
        let size = |v: &Option<toml::Spanned<String>>, d: u64| {
            format_size(
                v.as_ref()
                    .and_then(|v| parse_size(v.get_ref()).ok())
                    .unwrap_or(d),
            )
        };
        let timeout = i
            .timeout
            .as_ref()
            .and_then(|t| parse_duration_secs(t.get_ref()).ok())
            .unwrap_or(3600);
        let _ = writeln!(
            out,
            "{}. install: {answer} answer file{}; disk {}, memory {}, {} CPU(s), CPU model {}, timeout {timeout}s",
            next(),
            i.template
                .as_ref()
                .map(|t| format!(" from {}", loaded.resolve(t.get_ref()).display()))
                .unwrap_or_default(),
            size(&i.disk_size, 10 << 30),
            size(&i.memory, 2 << 30),
            i.cpus.as_ref().map_or(1, |c| *c.get_ref()),
            i.cpu_model.as_deref().unwrap_or("host"),
        );
        let _ = writeln!(
            out,
            "   hostname {}, timezone {}, root password {}, user {}",
            i.hostname.as_deref().unwrap_or("kiln"),
            i.timezone.as_deref().unwrap_or("UTC"),
            if i.root_password.is_some() || i.root_password_hash.is_some() {
                "set"
            } else {
                "locked"
            },
            i.user
                .as_ref()
                .map_or("none", |u| u.name.get_ref().as_str()),
        );
        if !i.packages.is_empty() {
            let _ = writeln!(out, "   packages: {}", i.packages.join(" "));
        }
    }
    if !r.customize.is_empty() {
        let _ = writeln!(out, "{}. customize:", next());
        for (n, op) in r.customize.iter().enumerate() {
            let _ = writeln!(out, "   {}. {}", n + 1, describe(op.get_ref()));
        }
    }
    if let Some(s) = &r.sysprep {
        let enable: Vec<&str> = s.enable.iter().map(|e| e.get_ref().as_str()).collect();
        let disable: Vec<&str> = s.disable.iter().map(|e| e.get_ref().as_str()).collect();
        let ops = sysprep::resolve(&enable, &disable);
        let _ = writeln!(
            out,
            "{}. sysprep ({} operations): {}",
            next(),
            ops.len(),
            ops.join(", ")
        );
    }
    if let Some(seed) = &r.seed {
        let _ = writeln!(
            out,
            "{}. cloud-init seed: hostname {}, {} ssh key(s), {} package(s)",
            next(),
            seed.hostname.as_deref().unwrap_or("(unset)"),
            seed.ssh_authorized_keys.len(),
            seed.packages.len()
        );
    }
    let o = &r.output;
    let _ = writeln!(
        out,
        "{}. output: {} ({}{})",
        next(),
        loaded.resolve(o.path.get_ref()).display(),
        match o.format {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        },
        if o.compression == Compression::Deflate {
            ", deflate-compressed"
        } else {
            ""
        }
    );
    out
}

fn describe(op: &CustomizeOp) -> String {
    let name = op.name();
    let detail = match op {
        CustomizeOp::RunCommand(c) | CustomizeOp::FirstbootCommand(c) => c.clone(),
        CustomizeOp::Write { path, content } => format!("{path} ({} bytes)", content.len()),
        CustomizeOp::Upload { from, to } => format!("{} -> {to}", from.display()),
        CustomizeOp::Mkdir(p) | CustomizeOp::Delete(p) => p.clone(),
        CustomizeOp::Chmod { mode, path } => format!("{mode} {path}"),
        CustomizeOp::Install(p) => p.join(" "),
        CustomizeOp::RootPassword(rp) if rp.disabled => "disabled".into(),
        CustomizeOp::RootPassword(_) => "set".into(),
        CustomizeOp::SshInject { user, .. } => format!("key for {user}"),
        CustomizeOp::Hostname(h) | CustomizeOp::Timezone(h) => h.clone(),
    };
    format!("{name}: {detail}")
}
