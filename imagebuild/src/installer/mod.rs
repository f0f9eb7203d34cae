//! Installer media: the catalog of known installers and kernel/initrd discovery on ISOs.

pub mod catalog;
pub mod locate;
