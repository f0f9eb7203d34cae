//! `kiln installer`: installer catalog, fetch, ISO extraction, answer files and
//! answer-file injection into an initrd.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use kiln_imagebuild::answer::{render_answer, AnswerKind, AnswerVars, UserVars};
use kiln_imagebuild::inject::{archive_name, inject, Injected};
use kiln_imagebuild::mirror::Mirror;
use kiln_imagebuild::password::{is_sha512_crypt, sha512_crypt};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Show the installer catalog.
    List,
    /// Copy the installer kernel and initrd from an ISO image into a directory.
    Extract {
        /// Installer ISO image.
        #[arg(long)]
        location: PathBuf,
        /// Output directory.
        #[arg(long)]
        output: PathBuf,
    },
    /// Download and verify an installer's kernel and initrd (cached by hash).
    Fetch(FetchArgs),
    /// Append a file to an initrd as a gzip-compressed cpio member (like
    /// virt-install --initrd-inject). The original bytes are kept as a prefix.
    Inject(InjectArgs),
    /// Render a preseed or kickstart answer file.
    Answer(AnswerArgs),
}

#[derive(clap::Args)]
pub struct FetchArgs {
    /// Catalog name (see `kiln installer list`).
    name: String,
    /// Archive mirror URL (default: the recipe's, else the host's apt sources).
    #[arg(long)]
    mirror: Option<String>,
    /// Take the mirror from this recipe's [base].
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// apt configuration directory searched for a mirror.
    #[arg(long, default_value = "/etc/apt")]
    apt_dir: PathBuf,
    /// OpenPGP keyring InRelease must be signed by.
    #[arg(long, default_value = kiln_imagebuild::fetch::DEFAULT_KEYRING)]
    keyring: PathBuf,
    /// Cache directory (default: $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct InjectArgs {
    /// Installer initrd to start from (not modified).
    #[arg(long)]
    initrd: PathBuf,
    /// File to inject.
    #[arg(long)]
    file: PathBuf,
    /// Path inside the initrd (default: the file's own name), e.g. preseed.cfg or ks.cfg.
    #[arg(long = "as")]
    as_name: Option<String>,
    /// Output initrd.
    #[arg(long)]
    output: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    Preseed,
    Kickstart,
}

#[derive(clap::Args)]
pub struct AnswerArgs {
    /// Answer file kind.
    #[arg(long, value_enum)]
    kind: Kind,
    /// Archive mirror URL the installer downloads from.
    #[arg(long)]
    mirror: String,
    /// Custom template instead of the built-in one.
    #[arg(long)]
    template: Option<PathBuf>,
    /// The installed system's host name.
    #[arg(long, default_value = "kiln")]
    hostname: String,
    /// The installed system's time zone (a tz database name, e.g. Europe/Paris).
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// Debian suite (preseed only).
    #[arg(long, default_value = "bookworm")]
    suite: String,
    /// Root password hash (SHA-512 crypt) or, without a leading `$6$`, a clear-text
    /// password to hash.
    #[arg(long)]
    root_password: Option<String>,
    /// Create this user.
    #[arg(long)]
    user: Option<String>,
    /// The user's password (hash or clear text, like --root-password).
    #[arg(long, requires = "user")]
    user_password: Option<String>,
    /// Extra package (repeatable).
    #[arg(long = "package")]
    packages: Vec<String>,
    /// Output file (default: stdout).
    #[arg(long)]
    output: Option<PathBuf>,
}

pub fn exec(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List => exec_list(),
        Command::Extract { location, output } => {
            let x = kiln_imagebuild::installer::locate::extract(&location, &output)?;
            println!("layout: {}", x.layout);
            println!("kernel: {}", x.kernel.display());
            println!("initrd: {}", x.initrd.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Fetch(args) => exec_fetch(args),
        Command::Inject(args) => exec_inject(args),
        Command::Answer(args) => exec_answer(args),
    }
}

fn exec_list() -> anyhow::Result<ExitCode> {
    use kiln_imagebuild::installer::catalog::{Source, CATALOG};
    for i in CATALOG {
        println!("{}: {}", i.name, i.description);
        match i.source {
            Source::DebianPackage {
                suite,
                arch,
                package,
                ..
            } => println!(
                "  source: package {package} from dists/{suite}/main/binary-{arch} of the mirror"
            ),
            Source::Tree { kernel, initrd } => {
                println!("  source: {kernel} + {initrd} in the install tree at --mirror, checked against its .treeinfo")
            }
        }
        println!("  answer file: /{}", i.answer.initrd_name());
        println!("  kernel cmdline: {}", i.kernel_cmdline());
    }
    Ok(ExitCode::SUCCESS)
}

fn exec_fetch(args: FetchArgs) -> anyhow::Result<ExitCode> {
    use kiln_imagebuild::fetch::{
        cache::default_cache_dir, fetch_installer, sources, FetchOptions,
    };
    use kiln_imagebuild::installer::catalog;
    let installer = catalog::find(&args.name).with_context(|| {
        let names: Vec<_> = catalog::names().collect();
        format!(
            "unknown installer `{}` (known: {})",
            args.name,
            names.join(", ")
        )
    })?;
    let recipe_mirror = match &args.recipe {
        Some(r) => super::recipe::load(r)?
            .recipe
            .base
            .into_inner()
            .mirror
            .map(|m| m.into_inner()),
        None => None,
    };
    let mirror = match args.mirror.or(recipe_mirror) {
        Some(m) => Mirror::parse(&m)?,
        None => {
            let suite = installer
                .suite
                .with_context(|| format!("`{}` needs --mirror", installer.name))?;
            sources::mirror_for_suite(&args.apt_dir, suite)?
        }
    };
    let cache_dir = match args.cache_dir.or_else(default_cache_dir) {
        Some(d) => d,
        None => {
            anyhow::bail!("no cache directory: set KILN_CACHE_DIR or HOME, or pass --cache-dir")
        }
    };
    eprintln!("kiln: fetching {} from {mirror}", installer.name);
    let fetched = fetch_installer(
        installer,
        &FetchOptions {
            mirror,
            cache_dir,
            keyring: args.keyring,
        },
    )?;
    println!("version: {}", fetched.version);
    println!("sha256: {}", fetched.sha256);
    println!("kernel: {}", fetched.kernel.display());
    println!("initrd: {}", fetched.initrd.display());
    println!("cmdline: {}", installer.kernel_cmdline());
    Ok(ExitCode::SUCCESS)
}

fn exec_inject(args: InjectArgs) -> anyhow::Result<ExitCode> {
    let name = match &args.as_name {
        Some(n) => n.clone(),
        None => file_name(&args.file)?,
    };
    let name = archive_name(&name)?;
    let data = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    inject(
        &args.initrd,
        &[Injected {
            name: &name,
            data: &data,
            mode: 0o644,
        }],
        &args.output,
    )?;
    eprintln!(
        "kiln: wrote {} (+ /{name}, {} bytes)",
        args.output.display(),
        data.len()
    );
    // The installer only looks for the file when told to on the kernel command line.
    for kind in [AnswerKind::Preseed, AnswerKind::Kickstart] {
        if name == kind.initrd_name() {
            eprintln!("kiln: boot it with: {}", kind.kernel_cmdline());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn file_name(path: &Path) -> anyhow::Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{} has no usable file name; pass --as", path.display()))
}

/// A `$6$` hash is used as given; anything else is a clear-text password to hash.
pub fn password_hash(value: &str) -> anyhow::Result<String> {
    if value.starts_with("$6$") {
        anyhow::ensure!(
            is_sha512_crypt(value),
            "malformed SHA-512 crypt hash {value:?}"
        );
        return Ok(value.to_string());
    }
    Ok(sha512_crypt(value)?)
}

fn exec_answer(args: AnswerArgs) -> anyhow::Result<ExitCode> {
    let mut vars = AnswerVars::new(Mirror::parse(&args.mirror)?);
    vars.hostname = args.hostname;
    vars.timezone = args.timezone;
    vars.suite = args.suite;
    vars.packages = args.packages;
    vars.root_password_hash = args
        .root_password
        .as_deref()
        .map(password_hash)
        .transpose()?;
    if let Some(name) = args.user {
        let pw = args
            .user_password
            .as_deref()
            .context("--user needs --user-password")?;
        vars.user = Some(UserVars {
            full_name: name.clone(),
            name,
            password_hash: password_hash(pw)?,
        });
    }
    let kind = match args.kind {
        Kind::Preseed => AnswerKind::Preseed,
        Kind::Kickstart => AnswerKind::Kickstart,
    };
    let text = render_answer(kind, args.template.as_deref(), &vars)?;
    match args.output {
        Some(path) => kiln_imagebuild::atomic::write_atomically(&path, |f| {
            std::io::Write::write_all(f, text.as_bytes())
        })
        .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
