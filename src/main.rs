//! `kiln`: a hypervisor harness and image builder on bare /dev/kvm.
//!
//! This file only parses the command line and dispatches; each subcommand lives in
//! its own module under `cmd/`, which turns its arguments into the typed config of
//! the crate that does the work.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Hypervisor harness and image builder on bare /dev/kvm"
)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel in a VM.
    Run(Box<cmd::run::Args>),
    /// Create, inspect and convert disk images.
    #[command(subcommand)]
    Img(cmd::img::Command),
    /// CPU models and CPUID.
    #[command(subcommand)]
    Cpu(cmd::cpu::Command),
    /// Host checks.
    #[command(subcommand)]
    Host(cmd::host::Command),
    /// Installer media: catalog, fetch, extract, answer-file injection.
    #[command(subcommand)]
    Installer(cmd::installer::Command),
    /// Build recipes.
    #[command(subcommand)]
    Recipe(cmd::recipe::Command),
    /// cloud-init NoCloud seed images.
    #[command(subcommand)]
    Seed(cmd::seed::Command),
    /// Benchmarks against QEMU.
    #[command(subcommand)]
    Bench(cmd::bench::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();

    let result = match cli.command {
        Command::Run(args) => cmd::run::exec(*args),
        Command::Img(c) => cmd::img::exec(c),
        Command::Cpu(c) => cmd::cpu::exec(c),
        Command::Host(c) => cmd::host::exec(c),
        Command::Installer(c) => cmd::installer::exec(c),
        Command::Recipe(c) => cmd::recipe::exec(c),
        Command::Seed(c) => cmd::seed::exec(c),
        Command::Bench(c) => cmd::bench::exec(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
