//! Recipes: every example in resources/recipes/ is valid, and each broken recipe in
//! tests/data/broken-recipes/ fails with the `file:line:column: message` (and suggestion)
//! its `# expect:` / `# suggest:` header lines give.

use std::path::{Path, PathBuf};

use kiln_imagebuild::recipe::{self, RecipeLoadError};

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_recipe_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/recipes");
    let files = toml_files(&dir);
    assert!(
        files.len() >= 3,
        "expected example recipes in {}",
        dir.display()
    );
    for f in files {
        let loaded = recipe::load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let plan = recipe::plan(&loaded);
        assert!(plan.contains("output:"), "{plan}");
    }
}

#[test]
fn broken_recipes_report_position_key_and_suggestion() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/broken-recipes");
    let files = toml_files(&dir);
    assert!(files.len() >= 10);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let header = |tag: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(tag))
                .map(|s| s.trim().to_string())
        };
        let expect = header("# expect:").unwrap_or_else(|| panic!("{}: no # expect:", f.display()));
        let err = match recipe::load(&f) {
            Ok(_) => panic!("{} unexpectedly valid", f.display()),
            Err(RecipeLoadError::Invalid(errors)) => errors,
            Err(e) => panic!("{}: {e}", f.display()),
        };
        let first = &err[0];
        let shown = first.to_string();
        let want = format!("{}:{expect}", f.display());
        assert!(shown.starts_with(&want), "\n got: {shown}\nwant: {want}...");
        match header("# suggest:") {
            Some(s) => {
                assert_eq!(first.suggestion.as_deref(), Some(s.as_str()), "{shown}");
                assert!(shown.ends_with(&format!("did you mean `{s}`?")), "{shown}");
            }
            None => assert!(first.suggestion.is_none(), "{shown}"),
        }
    }
}
