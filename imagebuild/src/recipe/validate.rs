//! Checks that serde cannot express: one base kind, known names, parseable sizes, a
//! password given one way only, absolute guest paths.

use std::ops::Range;

use toml::Spanned;

use super::error::{suggest, RecipeError};
use super::model::*;
use super::sysprep;
use super::LoadedRecipe;
use crate::installer::catalog;
use crate::mirror::Mirror;
use crate::password::is_sha512_crypt;
use crate::units::{parse_duration_secs, parse_size};

struct Checker<'a> {
    loaded: &'a LoadedRecipe,
    text: &'a str,
    errors: Vec<RecipeError>,
}

impl Checker<'_> {
    fn err(&mut self, span: Range<usize>, key: &str, message: String, suggestion: Option<String>) {
        let e = RecipeError::at(&self.loaded.path, self.text, span, message)
            .with_key(key)
            .with_suggestion(suggestion);
        self.errors.push(e);
    }
}

pub fn validate(loaded: &LoadedRecipe, text: &str) -> Vec<RecipeError> {
    let mut c = Checker {
        loaded,
        text,
        errors: Vec::new(),
    };
    let r = &loaded.recipe;
    check_base(&mut c, &r.base);
    if let Some(install) = &r.install {
        if r.base.get_ref().image.is_some() {
            c.err(
                r.base.span(),
                "install",
                "an [install] section needs an installer base, not `image`".into(),
                None,
            );
        }
        check_install(&mut c, install);
    }
    for op in &r.customize {
        check_op(&mut c, op);
    }
    if let Some(s) = &r.sysprep {
        check_sysprep(&mut c, s);
    }
    if r.output.compression == Compression::Deflate && r.output.format != Format::Qcow2 {
        let span = r.output.path.span();
        c.err(
            span,
            "compression",
            "compression = \"deflate\" needs format = \"qcow2\"".into(),
            None,
        );
    }
    c.errors
}

fn check_base(c: &mut Checker<'_>, base: &Spanned<Base>) {
    let b = base.get_ref();
    let kinds = [
        b.installer.is_some(),
        b.kernel.is_some() || b.initrd.is_some(),
        b.iso.is_some(),
        b.image.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        1 => {}
        0 => c.err(
            base.span(),
            "base",
            "[base] needs one of `installer`, `kernel` + `initrd`, `iso` or `image`".into(),
            None,
        ),
        _ => c.err(
            base.span(),
            "base",
            "[base] takes only one of `installer`, `kernel` + `initrd`, `iso` or `image`".into(),
            None,
        ),
    }
    if let Some(name) = &b.installer {
        if catalog::find(name.get_ref()).is_none() {
            let names: Vec<_> = catalog::names().collect();
            c.err(
                name.span(),
                "installer",
                format!(
                    "unknown installer `{}` (known: {})",
                    name.get_ref(),
                    names.join(", ")
                ),
                suggest(name.get_ref(), names),
            );
        }
    }
    match (&b.kernel, &b.initrd) {
        (Some(k), None) => c.err(
            k.span(),
            "kernel",
            "`kernel` needs `initrd` too".into(),
            None,
        ),
        (None, Some(i)) => c.err(
            i.span(),
            "initrd",
            "`initrd` needs `kernel` too".into(),
            None,
        ),
        _ => {}
    }
    // Base files are not required to exist yet: a build may fetch or produce them first.
    if let Some(m) = &b.mirror {
        if let Err(e) = Mirror::parse(m.get_ref()) {
            c.err(m.span(), "mirror", e.to_string(), None);
        }
    }
}

fn check_install(c: &mut Checker<'_>, i: &Install) {
    if let Some(a) = &i.answer {
        if !matches!(a.get_ref().as_str(), "preseed" | "kickstart") {
            c.err(
                a.span(),
                "answer",
                format!(
                    "unknown answer kind `{}` (use preseed or kickstart)",
                    a.get_ref()
                ),
                suggest(a.get_ref(), ["preseed", "kickstart"]),
            );
        }
    }
    if let Some(t) = &i.template {
        let full = c.loaded.resolve(t.get_ref());
        if !full.is_file() {
            c.err(
                t.span(),
                "template",
                format!("`template`: no file at {}", full.display()),
                None,
            );
        }
    }
    for (key, v) in [("disk_size", &i.disk_size), ("memory", &i.memory)] {
        if let Some(v) = v {
            match parse_size(v.get_ref()) {
                Ok(0) => c.err(v.span(), key, format!("`{key}` must not be zero"), None),
                Ok(_) => {}
                Err(e) => c.err(v.span(), key, format!("`{key}`: {e}"), None),
            }
        }
    }
    if let Some(t) = &i.timeout {
        if let Err(e) = parse_duration_secs(t.get_ref()) {
            c.err(t.span(), "timeout", format!("`timeout`: {e}"), None);
        }
    }
    if let Some(n) = &i.cpus {
        if !(1..=255).contains(n.get_ref()) {
            c.err(
                n.span(),
                "cpus",
                "`cpus` must be between 1 and 255".into(),
                None,
            );
        }
    }
    check_password(
        c,
        "root_password_hash",
        i.root_password.is_some(),
        &i.root_password_hash,
        None,
    );
    if let Some(u) = &i.user {
        let span = u.name.span();
        check_password(
            c,
            "password_hash",
            u.password.is_some(),
            &u.password_hash,
            Some(span),
        );
    }
}

/// A password is given as clear text or as a hash, not both; a hash must be SHA-512 crypt.
fn check_password(
    c: &mut Checker<'_>,
    key: &str,
    clear: bool,
    hash: &Option<Spanned<String>>,
    required_at: Option<Range<usize>>,
) {
    if let Some(h) = hash {
        if clear {
            c.err(
                h.span(),
                key,
                format!("give a clear-text password or `{key}`, not both"),
                None,
            );
        } else if !is_sha512_crypt(h.get_ref()) {
            c.err(
                h.span(),
                key,
                format!("`{key}` is not a SHA-512 crypt hash ($6$...)"),
                None,
            );
        }
    } else if let (Some(span), false) = (required_at, clear) {
        c.err(
            span,
            key,
            "[install.user] needs `password` or `password_hash`".into(),
            None,
        );
    }
}

fn check_op(c: &mut Checker<'_>, op: &Spanned<CustomizeOp>) {
    let name = op.get_ref().name();
    let mut guest_paths: Vec<&str> = Vec::new();
    match op.get_ref() {
        CustomizeOp::Write { path, .. } | CustomizeOp::Mkdir(path) | CustomizeOp::Delete(path) => {
            guest_paths.push(path)
        }
        CustomizeOp::Upload { from, to } => {
            guest_paths.push(to);
            let full = c.loaded.resolve(from);
            if !full.is_file() {
                c.err(
                    op.span(),
                    name,
                    format!("upload: no file at {}", full.display()),
                    None,
                );
            }
        }
        CustomizeOp::Chmod { mode, path } => {
            guest_paths.push(path);
            if mode.is_empty() || mode.len() > 4 || u32::from_str_radix(mode, 8).is_err() {
                c.err(
                    op.span(),
                    name,
                    format!("chmod: mode {mode:?} is not octal (e.g. \"0644\")"),
                    None,
                );
            }
        }
        CustomizeOp::RunCommand(cmd) | CustomizeOp::FirstbootCommand(cmd)
            if cmd.trim().is_empty() =>
        {
            c.err(op.span(), name, format!("{name}: empty command"), None)
        }
        CustomizeOp::Install(pkgs) if pkgs.is_empty() => {
            c.err(op.span(), name, "install: empty package list".into(), None)
        }
        CustomizeOp::RootPassword(rp) => {
            let given = [rp.password.is_some(), rp.hash.is_some(), rp.disabled];
            if given.iter().filter(|g| **g).count() != 1 {
                c.err(
                    op.span(),
                    name,
                    "root-password: give one of password, hash, disabled = true".into(),
                    None,
                );
            }
            if let Some(h) = &rp.hash {
                if !is_sha512_crypt(h.get_ref()) {
                    c.err(
                        h.span(),
                        "hash",
                        "root-password: hash is not SHA-512 crypt ($6$...)".into(),
                        None,
                    );
                }
            }
        }
        CustomizeOp::SshInject { user, key } if user.is_empty() || key.trim().is_empty() => c.err(
            op.span(),
            name,
            "ssh-inject: `user` and `key` must not be empty".into(),
            None,
        ),
        _ => {}
    }
    for p in guest_paths {
        if !p.starts_with('/') {
            c.err(
                op.span(),
                name,
                format!("{name}: guest path {p:?} must be absolute"),
                None,
            );
        }
    }
}

fn check_sysprep(c: &mut Checker<'_>, s: &Sysprep) {
    for (list, other) in [(&s.enable, &s.disable), (&s.disable, &s.enable)] {
        for op in list {
            let n = op.get_ref();
            if !sysprep::is_known(n) {
                c.err(
                    op.span(),
                    n,
                    format!("unknown sysprep operation `{n}`"),
                    suggest(n, sysprep::names()),
                );
            }
        }
        if std::ptr::eq(list, &s.enable) {
            for op in list {
                if other.iter().any(|o| o.get_ref() == op.get_ref()) {
                    let n = op.get_ref();
                    c.err(
                        op.span(),
                        n,
                        format!("sysprep operation `{n}` is both enabled and disabled"),
                        None,
                    );
                }
            }
        }
    }
}
