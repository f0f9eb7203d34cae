//! Answer files for unattended installs: Debian preseed and Fedora/RHEL kickstart,
//! rendered from the templates in `resources/answer/` with values from a recipe.

mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use template::{render, TemplateError};

use crate::mirror::Mirror;

const PRESEED: &str = include_str!("../../../resources/answer/debian-preseed.cfg");
const KICKSTART: &str = include_str!("../../../resources/answer/fedora-kickstart.ks");

/// Which installer consumes the answer file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// Debian installer: `/preseed.cfg` in the initrd.
    Preseed,
    /// Anaconda: `/ks.cfg` in the initrd, `inst.ks=file:/ks.cfg`.
    Kickstart,
}

impl AnswerKind {
    /// Name of the file in the initrd root.
    pub fn initrd_name(self) -> &'static str {
        match self {
            AnswerKind::Preseed => "preseed.cfg",
            AnswerKind::Kickstart => "ks.cfg",
        }
    }

    /// Kernel command line that makes the installer find and use the injected file.
    pub fn kernel_cmdline(self) -> &'static str {
        match self {
            AnswerKind::Preseed => "auto=true priority=critical console=ttyS0,115200",
            AnswerKind::Kickstart => "inst.ks=file:/ks.cfg inst.text console=ttyS0,115200",
        }
    }

    fn builtin(self) -> (&'static str, &'static str) {
        match self {
            AnswerKind::Preseed => ("debian-preseed.cfg", PRESEED),
            AnswerKind::Kickstart => ("fedora-kickstart.ks", KICKSTART),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("cannot read answer template {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("answer variable `{field}` has an invalid value {value:?}: {reason}")]
    BadValue {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Values an answer file takes from the recipe.
#[derive(Debug, Clone)]
pub struct AnswerVars {
    pub hostname: String,
    pub domain: String,
    pub timezone: String,
    pub mirror: Mirror,
    /// Debian suite (codename), e.g. `bookworm`; unused by kickstart.
    pub suite: String,
    pub root_password_hash: Option<String>,
    pub user: Option<UserVars>,
    pub packages: Vec<String>,
    /// Whole-disk device, `/dev/vda` for virtio-blk.
    pub disk: String,
    pub console: String,
}

#[derive(Debug, Clone)]
pub struct UserVars {
    pub name: String,
    pub full_name: String,
    pub password_hash: String,
}

impl AnswerVars {
    /// Defaults for everything but the mirror.
    pub fn new(mirror: Mirror) -> Self {
        AnswerVars {
            hostname: "kiln".into(),
            domain: "localdomain".into(),
            timezone: "UTC".into(),
            mirror,
            suite: "bookworm".into(),
            root_password_hash: None,
            user: None,
            packages: Vec::new(),
            disk: "/dev/vda".into(),
            console: "ttyS0,115200".into(),
        }
    }

    fn to_map(&self) -> Result<BTreeMap<&'static str, String>, AnswerError> {
        // Every value ends up inside one line of the answer file: a newline or quote in
        // one would let a recipe value inject extra directives.
        let check = |field: &'static str, value: &str| -> Result<String, AnswerError> {
            if value.chars().any(|c| c.is_control() || c == '"') {
                return Err(AnswerError::BadValue {
                    field,
                    value: value.to_string(),
                    reason: "control characters and quotes are not allowed",
                });
            }
            Ok(value.to_string())
        };
        let word = |field: &'static str, value: &str| -> Result<String, AnswerError> {
            let v = check(field, value)?;
            if v.is_empty() || v.contains(char::is_whitespace) {
                return Err(AnswerError::BadValue {
                    field,
                    value: value.to_string(),
                    reason: "must be one non-empty word",
                });
            }
            Ok(v)
        };
        let mut m = BTreeMap::new();
        m.insert("hostname", word("hostname", &self.hostname)?);
        m.insert("domain", word("domain", &self.domain)?);
        m.insert("timezone", word("timezone", &self.timezone)?);
        m.insert("suite", word("suite", &self.suite)?);
        m.insert("mirror_url", word("mirror", &self.mirror.to_string())?);
        m.insert("mirror_scheme", self.mirror.scheme.clone());
        m.insert("mirror_host", word("mirror", &self.mirror.host)?);
        m.insert("mirror_dir", word("mirror", &self.mirror.dir)?);
        let root = match &self.root_password_hash {
            Some(h) => word("root_password_hash", h)?,
            None => String::new(),
        };
        m.insert("root_password_hash", root);
        let (name, full, hash) = match &self.user {
            Some(u) => (
                word("user.name", &u.name)?,
                check("user.full_name", &u.full_name)?,
                word("user.password_hash", &u.password_hash)?,
            ),
            None => Default::default(),
        };
        m.insert("user_name", name);
        m.insert("user_fullname", full);
        m.insert("user_password_hash", hash);
        let mut packages = Vec::new();
        for p in &self.packages {
            packages.push(word("packages", p)?);
        }
        m.insert("packages", packages.join(" "));
        m.insert("package_lines", packages.join("\n"));
        let disk = word("disk", &self.disk)?;
        let disk_name = disk.rsplit('/').next().unwrap_or(&disk).to_string();
        m.insert("disk", disk);
        m.insert("disk_name", disk_name);
        m.insert("console", word("console", &self.console)?);
        Ok(m)
    }
}

/// Renders the built-in template for `kind`, or the template at `custom`.
pub fn render_answer(
    kind: AnswerKind,
    custom: Option<&Path>,
    vars: &AnswerVars,
) -> Result<String, AnswerError> {
    let map = vars.to_map()?;
    match custom {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| AnswerError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(render(&path.display().to_string(), &text, &map)?)
        }
        None => {
            let (name, text) = kind.builtin();
            Ok(render(name, text, &map)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> AnswerVars {
        let mut v = AnswerVars::new(Mirror::parse("http://mirror.test/debian").unwrap());
        v.packages = vec!["acpid".into(), "cloud-init".into()];
        v.root_password_hash = Some("$6$salt$hash".into());
        v
    }

    #[test]
    fn preseed_has_values_and_no_markers() {
        let text = render_answer(AnswerKind::Preseed, None, &vars()).unwrap();
        assert!(text.contains("d-i mirror/http/hostname string mirror.test\n"));
        assert!(text.contains("d-i mirror/http/directory string /debian\n"));
        assert!(text.contains("d-i pkgsel/include string acpid cloud-init\n"));
        assert!(text.contains("root-password-crypted password $6$salt$hash\n"));
        assert!(text.contains("d-i passwd/make-user boolean false\n"));
        assert!(text.contains("d-i grub-installer/bootdev string /dev/vda\n"));
        assert!(!text.contains("{{"));
    }

    #[test]
    fn kickstart_lists_packages_one_per_line() {
        let text = render_answer(AnswerKind::Kickstart, None, &vars()).unwrap();
        assert!(text.contains("%packages\n@core\nacpid\ncloud-init\n%end"));
        assert!(text.contains("ignoredisk --only-use=vda\n"));
    }

    #[test]
    fn newline_in_value_is_refused() {
        let mut v = vars();
        v.hostname = "a\nd-i evil".into();
        let e = render_answer(AnswerKind::Preseed, None, &v).unwrap_err();
        assert!(e.to_string().contains("hostname"), "{e}");
    }
}
