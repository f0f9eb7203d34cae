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
