//! Splitting a buffer into runs of zeroes and of data, for the writers that leave
//! zeroes out: `-n` and preallocated outputs (existing.rs), and sparse raw output
//! (copy.rs).

/// The runs of `data` (which starts at disk offset `offset`, a multiple of
/// `piece_len`): `(offset, length, all zero)`, pieces of the same kind joined.
pub fn runs(data: &[u8], offset: u64, piece_len: u64) -> Vec<(u64, u64, bool)> {
    let mut runs: Vec<(u64, u64, bool)> = Vec::new();
    for (i, piece) in data.chunks(piece_len as usize).enumerate() {
        let at = offset + i as u64 * piece_len;
        let zero = is_zero(piece);
        join(&mut runs, (at, piece.len() as u64, zero));
    }
    runs
}

/// The runs of `data` as qemu-img convert's `-S sparse` takes them. Zeroes are looked
/// for in 4 KiB blocks (512-byte sectors when `sparse` is smaller). A run of zeroes is
/// left out (`true`) when the input is known to read zero there (`known_zero(offset,
/// len)`, asked in order), when it starts the data (the chunk, or the end of a known
/// zero range), or when it is at least `sparse` long; a shorter one is written with
/// the data around it. `sparse` must be a non-zero multiple of 512, and `offset` a
/// multiple of it rounded down to a power of two.
pub fn sparse_runs(
    data: &[u8],
    offset: u64,
    sparse: u64,
    mut known_zero: impl FnMut(u64, u64) -> bool,
) -> Vec<(u64, u64, bool)> {
    let granule = if sparse >= 4096 { 4096 } else { 512 };
    // Runs of three kinds: known zero, zero, data.
    let mut kinds: Vec<(u64, u64, Kind)> = Vec::new();
    for (at, len, zero) in runs(data, offset, granule) {
        if !zero {
            join_kind(&mut kinds, (at, len, Kind::Data));
            continue;
        }
        for (i, _) in data[(at - offset) as usize..][..len as usize]
            .chunks(granule as usize)
            .enumerate()
        {
            let g = at + i as u64 * granule;
            let glen = granule.min(at + len - g);
            let kind = if known_zero(g, glen) {
                Kind::Known
            } else {
                Kind::Zero
            };
            join_kind(&mut kinds, (g, glen, kind));
        }
    }
    // Which runs are left out, before alignment.
    let mut data_seen = false;
    let marked: Vec<(u64, u64, Kind, bool)> = kinds
        .into_iter()
        .map(|(at, len, kind)| {
            let hole = match kind {
                Kind::Known => true,
                Kind::Zero => !data_seen || len >= sparse,
                Kind::Data => false,
            };
            data_seen = kind != Kind::Known && (data_seen || kind == Kind::Data);
            (at, len, kind, hole)
        })
        .collect();
    // As qemu-img, a hole found in the data starts and ends on a multiple of the
    // sparse size (rounded down to a power of two) where data borders it; what the
    // rounding cuts off is written as zeroes.
    let align = 1u64 << sparse.ilog2();
    let mut out = Vec::new();
    for (i, &(at, len, kind, hole)) in marked.iter().enumerate() {
        if kind != Kind::Zero || !hole {
            join(&mut out, (at, len, hole));
            continue;
        }
        let data_before = i > 0 && !marked[i - 1].3;
        let data_after = marked.get(i + 1).is_some_and(|next| !next.3);
        let end = at + len;
        let start = if data_before {
            at.next_multiple_of(align)
        } else {
            at
        };
        let stop = if data_after { end / align * align } else { end };
        if start >= stop {
            join(&mut out, (at, len, false));
            continue;
        }
        for run in [
            (at, start - at, false),
            (start, stop - start, true),
            (stop, end - stop, false),
        ] {
            if run.1 > 0 {
                join(&mut out, run);
            }
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Known,
    Zero,
    Data,
}

fn join_kind(runs: &mut Vec<(u64, u64, Kind)>, run: (u64, u64, Kind)) {
    match runs.last_mut() {
        Some(last) if last.2 == run.2 => last.1 += run.1,
        _ => runs.push(run),
    }
}

/// Whether `bytes` are all zeroes.
pub fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Append `run`, or lengthen the last run when it is of the same kind.
fn join(runs: &mut Vec<(u64, u64, bool)>, run: (u64, u64, bool)) {
    match runs.last_mut() {
        Some(last) if last.2 == run.2 => last.1 += run.1,
        _ => runs.push(run),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 64 << 10;

    #[test]
    fn runs_join_pieces_of_a_kind() {
        let p = P as usize;
        let mut data = vec![0u8; 5 * p + 100];
        data[p + 3] = 1; // piece 1
        data[2 * p] = 1; // piece 2
        data[5 * p + 99] = 1; // the short last piece
        let base = 10 * P;
        assert_eq!(
            runs(&data, base, P),
            vec![
                (base, P, true),
                (base + P, 2 * P, false),
                (base + 3 * P, 2 * P, true),
                (base + 5 * P, 100, false),
            ]
        );
        assert_eq!(runs(&[], base, P), vec![]);
        assert_eq!(
            runs(&data[..2 * p], base, 4096)[..3],
            [
                (base, P, true),
                (base + P, 4096, false),
                (base + P + 4096, P - 4096, true),
            ]
        );
    }

    #[test]
    fn zero_runs_shorter_than_the_sparse_size_are_data() {
        // 64 blocks of 4 KiB, data in blocks 1 and 40, zeroes elsewhere.
        let mut data = vec![0u8; 64 * 4096];
        data[4096] = 1;
        data[40 * 4096 + 7] = 1;
        let k = |kib: u64| kib << 10;
        let unknown = |_, _| false;
        // -S 4k: every zero block is a hole.
        assert_eq!(
            sparse_runs(&data, 0, 4096, unknown),
            vec![
                (0, k(4), true),
                (k(4), k(4), false),
                (k(8), k(152), true),
                (k(160), k(4), false),
                (k(164), k(92), true),
            ]
        );
        // -S 64k: holes start and end on 64 KiB where data borders them; the zeroes
        // before the first data shrink to nothing, so they are written.
        assert_eq!(
            sparse_runs(&data, 0, k(64), unknown),
            vec![
                (0, k(64), false),
                (k(64), k(64), true),
                (k(128), k(64), false),
                (k(192), k(64), true),
            ]
        );
        // Known zeroes (blocks 41-43) are left out however short and unaligned, and
        // the zeroes after them start the data again.
        let mut asked = Vec::new();
        let known = |at: u64, len: u64| {
            asked.push(at);
            len == 4096 && (k(164)..k(176)).contains(&at)
        };
        assert_eq!(
            sparse_runs(&data, 0, k(64), known),
            vec![
                (0, k(64), false),
                (k(64), k(64), true),
                (k(128), k(36), false),
                (k(164), k(92), true),
            ]
        );
        assert!(asked.windows(2).all(|w| w[0] < w[1]), "asked out of order");
        // -S 512: sectors; the sector holding data is the only data.
        let runs = sparse_runs(&data[..8192], 0, 512, unknown);
        assert_eq!(
            runs,
            vec![(0, 4096, true), (4096, 512, false), (4608, 3584, true)]
        );
    }
}
