//! `kiln`: a hypervisor harness and image builder on bare /dev/kvm.
//!
//! This file only parses the command line and dispatches; each subcommand lives in
//! its own module under `cmd/`, which turns its arguments into the typed config of
//! the crate that does the work.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, Subcommand};

mod cmd;
mod logging;

/// One subcommand: its name, one-line help, how to build its arguments, and what
/// runs it.
struct Subcmd {
    name: &'static str,
    about: &'static str,
    build: Build,
    exec: fn(&ArgMatches, Instant) -> anyhow::Result<ExitCode>,
}

#[derive(Clone, Copy)]
enum Build {
    /// Takes arguments itself (`kiln run`).
    Args(fn(Command) -> Command),
    /// Groups further subcommands (`kiln img create`).
    Group(fn(Command) -> Command),
}

const SUBCOMMANDS: &[Subcmd] = &[
    Subcmd {
        name: "run",
        about: "Boot a kernel in a VM.",
        build: Build::Args(cmd::run::Args::augment_args),
        exec: |m, start| cmd::run::exec(typed(m), start),
    },
    Subcmd {
        name: "img",
        about:
            "Create, inspect, map, measure, check, resize, compare, rebase, commit and convert disk images.",
        build: Build::Group(cmd::img::Command::augment_subcommands),
        exec: |m, _| cmd::img::exec(typed(m)),
    },
    Subcmd {
        name: "cpu",
        about: "CPU models and CPUID.",
        build: Build::Group(cmd::cpu::Command::augment_subcommands),
        exec: |m, _| cmd::cpu::exec(typed(m)),
    },
    Subcmd {
        name: "host",
        about: "Host checks.",
        build: Build::Group(cmd::host::Command::augment_subcommands),
        exec: |m, _| cmd::host::exec(typed(m)),
    },
    Subcmd {
        name: "installer",
        about: "Installer media: catalog, fetch, extract, answer-file injection.",
        build: Build::Group(cmd::installer::Command::augment_subcommands),
        exec: |m, _| cmd::installer::exec(typed(m)),
    },
    Subcmd {
        name: "recipe",
        about: "Build recipes.",
        build: Build::Group(cmd::recipe::Command::augment_subcommands),
        exec: |m, _| cmd::recipe::exec(typed(m)),
    },
    Subcmd {
        name: "seed",
        about: "cloud-init NoCloud seed images.",
        build: Build::Group(cmd::seed::Command::augment_subcommands),
        exec: |m, _| cmd::seed::exec(typed(m)),
    },
    Subcmd {
        name: "bench",
        about: "Benchmarks against QEMU.",
        build: Build::Group(cmd::bench::Command::augment_subcommands),
        exec: |m, _| cmd::bench::exec(typed(m)),
    },
];

/// The command line. Each subcommand's own arguments are built only when that
/// subcommand is chosen (clap's `Command::defer`): building all of them on every
/// start cost `kiln run` about a millisecond and a megabyte of touched code.
fn cli() -> Command {
    let mut cli = Command::new("kiln")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Hypervisor harness and image builder on bare /dev/kvm")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .arg(
            Arg::new("verbose")
                .short('v')
                .long("verbose")
                .global(true)
                .action(ArgAction::Count)
                .help("More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides."),
        );
    for sub in SUBCOMMANDS {
        let command = Command::new(sub.name).about(sub.about);
        cli = cli.subcommand(match sub.build {
            Build::Args(build) => command.defer(build),
            Build::Group(build) => command
                .subcommand_required(true)
                .arg_required_else_help(true)
                .defer(build),
        });
    }
    cli
}

/// The typed arguments of a subcommand, or clap's usage error and exit.
fn typed<T: FromArgMatches>(matches: &ArgMatches) -> T {
    T::from_arg_matches(matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    // kiln's "since process start" clock for `run`: as early as Rust code can take it.
    let start = Instant::now();
    let matches = cli().get_matches();
    let level = match matches.get_count("verbose") {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    logging::init(level);

    let Some((name, sub)) = matches.subcommand() else {
        // subcommand_required: clap has already printed the usage and exited.
        return ExitCode::from(2);
    };
    let Some(subcmd) = SUBCOMMANDS.iter().find(|s| s.name == name) else {
        eprintln!("kiln: error: no handler for subcommand {name}");
        return ExitCode::from(1);
    };
    if name != "run" {
        // Rust ignores SIGPIPE, so `kiln cpu list | head` would panic in println! once
        // head exits. Reports and listings end quietly instead, as other Unix tools
        // do. `run` keeps it ignored: a closed console socket or passt connection is
        // an error to report and tear down from, not a reason to die.
        // SAFETY: setting a signal's disposition to SIG_DFL has no preconditions; no
        // other thread exists yet.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let code = match (subcmd.exec)(sub, start) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: error: {}", error_chain(&e));
            ExitCode::from(1)
        }
    };
    // Counts of log lines the rate limit left out (src/logging.rs).
    log::logger().flush();
    code
}

/// The error and its causes joined by ": ", as `{:#}` prints them, but without a
/// cause whose text the message already holds: many errors name their cause in their
/// own message and also return it as `source()`.
pub(crate) fn error_chain(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_drops_causes_the_message_already_names() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let inner = anyhow::Error::new(io).context("disk.qcow2: No such file");
        let e = inner.context("cannot check disk.qcow2");
        assert_eq!(
            error_chain(&e),
            "cannot check disk.qcow2: disk.qcow2: No such file"
        );
        let plain = anyhow::anyhow!("root").context("outer");
        assert_eq!(error_chain(&plain), "outer: root");
    }

    #[test]
    fn command_line_is_consistent() {
        // Builds the deferred subcommands too and checks clap's invariants.
        cli().debug_assert();
    }

    #[test]
    fn every_argument_has_help() {
        // A doc comment lost or moved onto the wrong field leaves an option without
        // help in `--help` (as `img measure -f` was once).
        fn walk(cmd: &Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cli = cli();
        cli.build();
        let mut missing = Vec::new();
        walk(&cli, "kiln", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    #[test]
    fn subcommand_arguments_are_parsed_after_deferral() {
        // The global -v works before and after the subcommand.
        let m = cli()
            .try_get_matches_from(["kiln", "-v", "run", "--kernel", "/k"])
            .unwrap();
        assert_eq!(m.get_count("verbose"), 1);
        let m = cli()
            .try_get_matches_from(["kiln", "run", "--kernel", "/k", "-vv", "--cpus", "2"])
            .unwrap();
        assert_eq!(m.get_count("verbose"), 2);
        let (name, sub) = m.subcommand().unwrap();
        assert_eq!(name, "run");
        assert!(cmd::run::Args::from_arg_matches(sub).is_ok());
        let err = cli()
            .try_get_matches_from(["kiln", "run", "--no-such-flag"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        let err = cli().try_get_matches_from(["kiln", "img"]).unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
    }
}
