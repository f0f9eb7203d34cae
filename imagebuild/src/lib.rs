//! kiln's image build driver: recipes, installer media, answer files, seeds and conversion.
//!
//! Crates chosen, and why: `flate2` (gzip for initrd members and deflate for qcow2
//! clusters; the standard Rust binding), `sha-crypt` (RustCrypto's SHA-512 crypt),
//! `fatfs` (the maintained pure-Rust FAT implementation), `toml` + `serde` (recipes, with
//! spans for error positions), `strsim` (edit distance for key suggestions), `ureq`
//! (small blocking HTTP client), `lzma-rs` (pure-Rust xz, no C build), `ar` and `tar`
//! (Debian package extraction), `sha2` (archive checksums), `indicatif` (progress bars),
//! `tempfile` (atomic outputs), `imago` (reading qcow2 input).

pub mod answer;
pub mod atomic;
pub mod cloudinit;
pub mod convert;
pub mod cpio;
pub mod fetch;
pub mod inject;
pub mod installer;
pub mod iso9660;
pub mod mirror;
pub mod password;
pub mod recipe;
pub mod seed;
pub mod units;
