//! The installers kiln knows by name. Entries say where the kernel and initrd come from
//! relative to a mirror (never which mirror) and how to boot them unattended.

use crate::answer::AnswerKind;

/// How an installer's kernel and initrd are obtained from a mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A Debian package in `dists/<suite>/main/binary-<arch>/Packages.xz`, holding the
    /// kernel and initrd at `dir` inside its data.tar.
    DebianPackage {
        suite: &'static str,
        arch: &'static str,
        package: &'static str,
        dir: &'static str,
    },
    /// Loose files in an install tree (kernel and initrd paths relative to the tree).
    Tree {
        kernel: &'static str,
        initrd: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Installer {
    pub name: &'static str,
    pub description: &'static str,
    pub answer: AnswerKind,
    pub source: Source,
    /// Debian suite for the answer file, when Debian.
    pub suite: Option<&'static str>,
}

impl Installer {
    pub fn kernel_cmdline(&self) -> &'static str {
        self.answer.kernel_cmdline()
    }
}

pub const CATALOG: &[Installer] = &[
    Installer {
        name: "debian-12",
        description: "Debian 12 (bookworm) netboot installer, amd64",
        answer: AnswerKind::Preseed,
        source: Source::DebianPackage {
            suite: "bookworm",
            arch: "amd64",
            package: "debian-installer-12-netboot-amd64",
            dir: "usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64",
        },
        suite: Some("bookworm"),
    },
    Installer {
        name: "fedora-40",
        description: "Fedora 40 Everything netinstall (Anaconda, kickstart), x86_64",
        answer: AnswerKind::Kickstart,
        source: Source::Tree {
            kernel: "images/pxeboot/vmlinuz",
            initrd: "images/pxeboot/initrd.img",
        },
        suite: None,
    },
];

pub fn find(name: &str) -> Option<&'static Installer> {
    CATALOG.iter().find(|i| i.name == name)
}

pub fn names() -> impl Iterator<Item = &'static str> {
    CATALOG.iter().map(|i| i.name)
}
