//! The recipe's TOML shape. Every struct denies unknown keys, so a misspelled key is an
//! error (with a suggestion) rather than a silently ignored setting.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub base: Spanned<Base>,
    #[serde(default)]
    pub install: Option<Install>,
    #[serde(default)]
    pub customize: Vec<Spanned<CustomizeOp>>,
    #[serde(default)]
    pub sysprep: Option<Sysprep>,
    #[serde(default)]
    pub seed: Option<Seed>,
    pub output: Output,
}

/// What the image starts from: exactly one of an installer from the catalog, an
/// installer kernel + initrd, an installer ISO, or an existing image used as backing file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    pub installer: Option<Spanned<String>>,
    pub kernel: Option<Spanned<PathBuf>>,
    pub initrd: Option<Spanned<PathBuf>>,
    pub iso: Option<Spanned<PathBuf>>,
    pub image: Option<Spanned<PathBuf>>,
    /// Archive mirror for fetching and installing; default: the host's apt sources.
    pub mirror: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Install {
    /// `preseed` or `kickstart`; default: the catalog entry's.
    pub answer: Option<Spanned<String>>,
    /// Custom answer template (same variables as the built-in ones).
    pub template: Option<Spanned<PathBuf>>,
    pub disk_size: Option<Spanned<String>>,
    pub memory: Option<Spanned<String>>,
    pub cpus: Option<Spanned<u32>>,
    pub cpu_model: Option<String>,
    pub timeout: Option<Spanned<String>>,
    pub hostname: Option<String>,
    pub domain: Option<String>,
    pub timezone: Option<String>,
    pub suite: Option<String>,
    /// Clear-text root password, hashed (SHA-512 crypt) when the answer file is rendered.
    pub root_password: Option<String>,
    pub root_password_hash: Option<Spanned<String>>,
    pub user: Option<User>,
    #[serde(default)]
    pub packages: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: Spanned<String>,
    pub full_name: Option<String>,
    pub password: Option<String>,
    pub password_hash: Option<Spanned<String>>,
}

/// One customization step, named like the virt-customize option it mirrors.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum CustomizeOp {
    RunCommand(String),
    Write { path: String, content: String },
    Upload { from: PathBuf, to: String },
    Mkdir(String),
    Delete(String),
    Chmod { mode: String, path: String },
    Install(Vec<String>),
    RootPassword(RootPassword),
    SshInject { user: String, key: String },
    Hostname(String),
    Timezone(String),
    FirstbootCommand(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootPassword {
    pub password: Option<String>,
    pub hash: Option<Spanned<String>>,
    #[serde(default)]
    pub disabled: bool,
}

/// virt-sysprep operations to run on top of its default set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sysprep {
    #[serde(default)]
    pub enable: Vec<Spanned<String>>,
    #[serde(default)]
    pub disable: Vec<Spanned<String>>,
}

/// cloud-init NoCloud seed contents.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    pub packages: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub path: Spanned<PathBuf>,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub compression: Compression,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Qcow2,
    Raw,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Deflate,
}

impl CustomizeOp {
    pub fn name(&self) -> &'static str {
        match self {
            CustomizeOp::RunCommand(_) => "run-command",
            CustomizeOp::Write { .. } => "write",
            CustomizeOp::Upload { .. } => "upload",
            CustomizeOp::Mkdir(_) => "mkdir",
            CustomizeOp::Delete(_) => "delete",
            CustomizeOp::Chmod { .. } => "chmod",
            CustomizeOp::Install(_) => "install",
            CustomizeOp::RootPassword(_) => "root-password",
            CustomizeOp::SshInject { .. } => "ssh-inject",
            CustomizeOp::Hostname(_) => "hostname",
            CustomizeOp::Timezone(_) => "timezone",
            CustomizeOp::FirstbootCommand(_) => "firstboot-command",
        }
    }
}
