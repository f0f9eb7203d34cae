//! Build steps of kiln-vmm:
//! - assembles kiln's tiny test guests (resources/guests/*.S) into PVH ELF images with
//!   the host C toolchain, so no extra rustup target is needed (embedded by
//!   `src/guests.rs`);
//! - turns the CPU data (resources/cpu/features.toml and models.toml) into static Rust
//!   tables, OUT_DIR/cpu_features.rs and OUT_DIR/cpu_models.rs, included by
//!   `src/cpu/features.rs` and `src/cpu/models.rs`. Parsing and checking them here keeps
//!   TOML parsing off `kiln run`'s start-up path, and a mistake in them fails the build.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

#[path = "src/cpu/spelling.rs"]
mod spelling;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    build_guests(&out.join("guests"));
    if let Err(errors) = build_cpu_tables(&out) {
        // One `cargo::error` per problem: cargo prints each, without the script's other
        // output, and fails the build.
        for error in errors {
            println!("cargo::error={}", error.replace('\n', " "));
        }
    }
}

fn build_guests(out: &Path) {
    let guests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/guests");
    std::fs::create_dir_all(out).expect("create OUT_DIR/guests");
    println!("cargo:rerun-if-changed={}", guests.display());
    let linker_script = guests.join("guest.ld");
    for entry in std::fs::read_dir(&guests).expect("read resources/guests") {
        let path = entry.expect("dir entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
        if path.extension().and_then(|e| e.to_str()) != Some("S") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let object = out.join(format!("{stem}.o"));
        let image = out.join(format!("{stem}.elf"));
        run(Command::new("cc")
            .args(["-c", "-nostdlib", "-fno-pic", "-I"])
            .arg(&guests)
            .arg("-o")
            .arg(&object)
            .arg(&path));
        run(Command::new("ld")
            .args([
                "-static",
                "-nostdlib",
                "--build-id=none",
                "-z",
                "noexecstack",
                "-T",
            ])
            .arg(&linker_script)
            .arg("-o")
            .arg(&image)
            .arg(&object));
    }
}

fn run(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e} (install gcc and binutils)"));
    assert!(status.success(), "{command:?} failed: {status}");
}

const FEATURES_FILE: &str = "resources/cpu/features.toml";
const MODELS_FILE: &str = "resources/cpu/models.toml";

/// Reads, checks and generates both CPU tables; every problem found, each naming its
/// file and entry.
fn build_cpu_tables(out: &Path) -> Result<(), Vec<String>> {
    let features_text = read_resource(FEATURES_FILE)?;
    let models_text = read_resource(MODELS_FILE)?;
    let features_file: FeaturesFile = parse_toml(FEATURES_FILE, &features_text)?;
    let features = FeatureData::check(features_file)?;
    let models_file: ModelsFile = parse_toml(MODELS_FILE, &models_text)?;
    check_models(&models_file.model, &features)?;
    write_out(out, "cpu_features.rs", &features.generate());
    write_out(out, "cpu_models.rs", &generate_models(&models_file.model));
    Ok(())
}

fn read_resource(relative: &str) -> Result<String, Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    println!("cargo:rerun-if-changed={}", path.display());
    std::fs::read_to_string(&path).map_err(|e| vec![format!("{relative}: cannot read: {e}")])
}

fn parse_toml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, Vec<String>> {
    toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(String::new(), |span| {
            let before = &text[..span.start];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(":{line}:{column}")
        });
        vec![format!("{file}{at}: {}", e.message().trim())]
    })
}

fn write_out(out: &Path, name: &str, source: &str) {
    let path = out.join(name);
    std::fs::write(&path, source).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeaturesFile {
    word: Vec<WordEntry>,
    aliases: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WordEntry {
    leaf: u32,
    subleaf: u32,
    reg: String,
    /// Name -> bit; iterated in name order, which is the order of
    /// `FeatureTable::features()` within a word.
    bits: BTreeMap<String, u8>,
}

/// The checked feature table, in the shape of `src/cpu/features.rs`'s statics.
struct FeatureData {
    /// (leaf, subleaf, `Reg` variant).
    words: Vec<(u32, u32, &'static str)>,
    /// (index into `words`, bit, name), in file order.
    features: Vec<(usize, u8, String)>,
    by_name: BTreeMap<String, usize>,
    /// Alias -> index into `features`.
    aliases: BTreeMap<String, usize>,
}

impl FeatureData {
    fn check(file: FeaturesFile) -> Result<FeatureData, Vec<String>> {
        let mut errors = Vec::new();
        let mut data = FeatureData {
            words: Vec::new(),
            features: Vec::new(),
            by_name: BTreeMap::new(),
            aliases: BTreeMap::new(),
        };
        for w in file.word {
            let word = format!("word CPUID.{:02X}H.{}:{}", w.leaf, w.subleaf, w.reg);
            let Some(reg) = reg_variant(&w.reg) else {
                errors.push(format!(
                    "{FEATURES_FILE}: {word}: register `{}` is not eax, ebx, ecx or edx",
                    w.reg
                ));
                continue;
            };
            if data.words.contains(&(w.leaf, w.subleaf, reg)) {
                errors.push(format!("{FEATURES_FILE}: {word} listed twice"));
                continue;
            }
            let word_index = data.words.len();
            data.words.push((w.leaf, w.subleaf, reg));
            let mut named_bits: BTreeMap<u8, &str> = BTreeMap::new();
            for (name, bit) in &w.bits {
                if name.is_empty() {
                    errors.push(format!("{FEATURES_FILE}: {word}: empty feature name"));
                } else if *bit > 31 {
                    errors.push(format!(
                        "{FEATURES_FILE}: {word}: feature `{name}`: bit {bit} out of range 0..=31"
                    ));
                } else if let Some(other) = named_bits.insert(*bit, name) {
                    errors.push(format!(
                        "{FEATURES_FILE}: {word}: bit {bit} named twice, `{other}` and `{name}`"
                    ));
                } else if data.by_name.contains_key(name) {
                    errors.push(format!(
                        "{FEATURES_FILE}: {word}: feature `{name}` defined twice"
                    ));
                } else {
                    data.by_name.insert(name.clone(), data.features.len());
                    data.features.push((word_index, *bit, name.clone()));
                }
            }
        }
        for (alias, target) in file.aliases {
            if data.by_name.contains_key(&alias) {
                errors.push(format!(
                    "{FEATURES_FILE}: [aliases] `{alias}` is already a feature name"
                ));
            } else if let Some(&index) = data.by_name.get(&target) {
                data.aliases.insert(alias, index);
            } else {
                errors.push(format!(
                    "{FEATURES_FILE}: [aliases] `{alias}` = `{target}`: no such feature"
                ));
            }
        }
        if errors.is_empty() {
            Ok(data)
        } else {
            Err(errors)
        }
    }

    /// As the runtime's `FeatureTable::lookup`: alias, then name, for each spelling.
    fn lookup(&self, name: &str) -> Option<usize> {
        spelling::spellings(name).find_map(|n| {
            (self.aliases.get(n.as_ref()))
                .or_else(|| self.by_name.get(n.as_ref()))
                .copied()
        })
    }

    fn generate(&self) -> String {
        let mut s = format!("// @generated by vmm/build.rs from {FEATURES_FILE}: do not edit.\n\n");
        let word = |i: usize| {
            let (leaf, subleaf, reg) = self.words[i];
            format!("FeatureWord {{ leaf: {leaf:#x}, subleaf: {subleaf:#x}, reg: Reg::{reg} }}")
        };
        let _ = writeln!(s, "static WORDS: [FeatureWord; {}] = [", self.words.len());
        for i in 0..self.words.len() {
            let _ = writeln!(s, "    {},", word(i));
        }
        s += "];\n\n";
        let _ = writeln!(s, "static FEATURES: [Feature; {}] = [", self.features.len());
        for (w, bit, name) in &self.features {
            let _ = writeln!(
                s,
                "    Feature {{ word: {}, bit: {bit}, name: {name:?} }},",
                word(*w)
            );
        }
        s += "];\n\n";
        for (what, map) in [("FEATURE_NAMES", &self.by_name), ("ALIASES", &self.aliases)] {
            // BTreeMap order is `str` order, what the runtime's binary search expects.
            let _ = writeln!(s, "static {what}: [(&str, u16); {}] = [", map.len());
            for (name, index) in map {
                let _ = writeln!(s, "    ({name:?}, {index}),");
            }
            s += "];\n\n";
        }
        s
    }
}

fn reg_variant(reg: &str) -> Option<&'static str> {
    match reg.to_ascii_lowercase().as_str() {
        "eax" => Some("Eax"),
        "ebx" => Some("Ebx"),
        "ecx" => Some("Ecx"),
        "edx" => Some("Edx"),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    model: Vec<ModelEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ModelEntry {
    name: String,
    source: String,
    note: Option<String>,
    passthrough: Option<Passthrough>,
    #[serde(default)]
    vendor: String,
    #[serde(default)]
    family: u32,
    #[serde(default)]
    model: u32,
    #[serde(default)]
    stepping: u32,
    #[serde(default)]
    level: u32,
    #[serde(default)]
    xlevel: u32,
    model_id: Option<String>,
    #[serde(default)]
    features: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Passthrough {
    Host,
    Max,
}

/// What the runtime relies on: unique names (`find` ignores case), known features, and
/// identities that fit their CPUID fields.
fn check_models(models: &[ModelEntry], features: &FeatureData) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    let mut names = BTreeSet::new();
    for m in models {
        let mut fail =
            |what: String| errors.push(format!("{MODELS_FILE}: model `{}`: {what}", m.name));
        if m.name.is_empty() || m.name.contains(',') {
            fail("the name must be non-empty and have no comma".into());
        }
        if !names.insert(m.name.to_ascii_lowercase()) {
            fail("defined twice (names are case-insensitive)".into());
        }
        let mut seen = BTreeSet::new();
        for f in &m.features {
            match features.lookup(f) {
                None => fail(format!("unknown feature `{f}` (see {FEATURES_FILE})")),
                Some(i) if !seen.insert(i) => fail(format!("feature `{f}` listed twice")),
                Some(_) => {}
            }
        }
        if m.model_id.as_ref().is_some_and(|id| id.len() > 47) {
            fail("model-id longer than the 47 bytes of the CPUID brand string".into());
        }
        if m.passthrough.is_some() {
            if !m.features.is_empty() {
                fail("a passthrough model takes the host's features: drop `features`".into());
            }
            continue;
        }
        if m.vendor.len() != 12 {
            fail(format!("vendor `{}` is not 12 bytes", m.vendor));
        }
        if m.family > 0xf + 0xff || m.model > 0xff || m.stepping > 0xf {
            fail("family (max 270), model (max 255) or stepping (max 15) out of range".into());
        }
        if m.level == 0 || m.xlevel < 0x8000_0000 {
            fail("level must be > 0 and xlevel >= 0x80000000".into());
        }
        if m.features.is_empty() {
            fail("no features".into());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn generate_models(models: &[ModelEntry]) -> String {
    let mut s = format!("// @generated by vmm/build.rs from {MODELS_FILE}: do not edit.\n\n");
    let _ = writeln!(s, "static MODELS: [Model; {}] = [", models.len());
    for m in models {
        let _ = writeln!(
            s,
            "    Model {{\n        name: {:?},\n        source: {:?},\n        note: {:?},\n        \
             passthrough: {},\n        vendor: {:?},\n        family: {},\n        model: {},\n        \
             stepping: {},\n        level: {:#x},\n        xlevel: {:#x},\n        model_id: {:?},\n        \
             features: &{:?},\n    }},",
            m.name,
            m.source,
            m.note,
            m.passthrough
                .map_or("None".into(), |p| format!("Some(Passthrough::{p:?})")),
            m.vendor,
            m.family,
            m.model,
            m.stepping,
            m.level,
            m.xlevel,
            m.model_id,
            m.features,
        );
    }
    s += "];\n";
    s
}
