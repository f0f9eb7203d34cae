//! One module per subcommand. Each turns its clap arguments into the typed config
//! of the library crate that does the work, and maps the result to an exit code.

pub mod bench;
pub mod cpu;
pub mod host;
pub mod img;
pub mod installer;
pub mod recipe;
pub mod run;
pub mod seed;

/// clap's value parser for sizes ("512M", "10G", "1.5G", "4096"): kiln's one size
/// grammar, shared with recipes (`kiln_imagebuild::units::parse_size`).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    kiln_imagebuild::units::parse_size(s).map_err(|e| e.to_string())
}
