//! How a feature name may be spelled, as QEMU accepts it: as given, then with `_`
//! and `-` swapped either way. One rule for `FeatureTable::lookup` and for build.rs,
//! which checks the names in resources/cpu/models.toml with it (`#[path]` include).

use std::borrow::Cow;

/// The spellings of `name` to try, in order; the swapped ones are built only if asked for.
pub fn spellings(name: &str) -> impl Iterator<Item = Cow<'_, str>> {
    [None, Some(('_', "-")), Some(('-', "_"))]
        .into_iter()
        .map(move |swap| match swap {
            None => Cow::Borrowed(name),
            Some((from, to)) => Cow::Owned(name.replace(from, to)),
        })
}
