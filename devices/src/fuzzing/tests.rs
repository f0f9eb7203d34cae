//! The fuzz entry points as plain tests: seeds, then seeded random mutations of them.
//! (cargo-fuzz runs the same functions with coverage guidance; see fuzz/README.md.)

use super::*;
use crate::block::create::{create_image, CreateOptions};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn mutate(seed: &[u8], rng: &mut XorShift, span: usize) -> Vec<u8> {
    let mut v = seed.to_vec();
    if v.is_empty() {
        return v;
    }
    for _ in 0..1 + rng.next() % 8 {
        let i = (rng.next() as usize) % v.len().min(span);
        match rng.next() % 4 {
            0 => v[i] = rng.next() as u8,
            1 => v[i] ^= 1 << (rng.next() % 8),
            2 => v[i] = [0, 0xff, 0x80, 1][(rng.next() % 4) as usize],
            _ => {
                let end = (i + 8).min(v.len());
                v[i..end].fill(0xff)
            }
        }
    }
    if rng.next() % 16 == 0 {
        let cut = (rng.next() as usize) % v.len();
        v.truncate(cut);
    }
    v
}

/// One descriptor in the fuzz input encoding.
fn desc(addr: u64, len: u32, write: bool, next: Option<u8>) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend(len.to_le_bytes());
    let flags: u16 = u16::from(next.is_some()) | if write { 2 } else { 0 };
    d.extend(flags.to_le_bytes());
    d.push(next.unwrap_or(0));
    d.push(0);
    d
}

fn blk_seed(kind: u32, sector: u64, data_len: u32, data_write: bool) -> Vec<u8> {
    let mut v = vec![2u8]; // three descriptors
    v.extend(desc(0x1000, 16, false, Some(1)));
    v.extend(desc(0x2000, data_len, data_write, Some(2)));
    v.extend(desc(0x3000, 1, true, None));
    // Guest memory from 0x1000: the header.
    let mut mem = vec![0u8; 0x3000];
    mem[0..4].copy_from_slice(&kind.to_le_bytes());
    mem[8..16].copy_from_slice(&sector.to_le_bytes());
    // Discard segment at 0x2000.
    mem[0x1000..0x1008].copy_from_slice(&1u64.to_le_bytes());
    mem[0x1008..0x100c].copy_from_slice(&2u32.to_le_bytes());
    v.extend(mem);
    v
}

#[test]
fn blk_descriptor_chain_never_panics() {
    let seeds = [
        blk_seed(0, 1, 1024, true),
        blk_seed(1, 2, 512, false),
        blk_seed(4, 0, 0, false),
        blk_seed(8, 0, 20, true),
        blk_seed(11, 0, 16, false),
        blk_seed(13, 0, 16, false),
        blk_seed(0, 63, 1024, true),
        vec![],
        vec![0xff; 300],
    ];
    run_short_inputs(blk_descriptor_chain, &seeds, 0x9e37_79b9_7f4a_7c15, 64);
}

/// Run `entry` on each seed, on 300 mutations of each (in its first `span` bytes),
/// and on 300 random inputs of up to 511 bytes.
fn run_short_inputs(entry: fn(&[u8]), seeds: &[Vec<u8>], rng_seed: u64, span: usize) {
    let mut rng = XorShift(rng_seed);
    for seed in seeds {
        entry(seed);
        for _ in 0..300 {
            entry(&mutate(seed, &mut rng, span));
        }
    }
    for _ in 0..300 {
        let len = (rng.next() % 512) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        entry(&data);
    }
}

/// A virtio-serial input: one chain per control message (id, event, value), each one
/// 8-byte driver buffer at 0x1000, 0x1010, ..., and the messages there.
fn serial_seed(messages: &[(u32, u16, u16)]) -> Vec<u8> {
    let mut v = vec![(messages.len() - 1) as u8];
    for i in 0..messages.len() {
        v.extend(desc(0x1000 + 0x10 * i as u64, 8, false, None));
    }
    for &(id, event, value) in messages {
        v.extend(id.to_le_bytes());
        v.extend(event.to_le_bytes());
        v.extend(value.to_le_bytes());
        v.extend([0u8; 8]);
    }
    v
}

#[test]
fn serial_control_never_panics() {
    let seeds = [
        serial_seed(&[(0, 0, 1), (1, 3, 1), (2, 3, 1), (2, 6, 1), (1, 6, 0)]),
        serial_seed(&[(0, 0, 1), (0, 0, 1), (0, 0, 1), (3, 3, 1), (0, 3, 1)]),
        serial_seed(&[(u32::MAX, 6, 1), (1, 42, 7), (0, 0, 0), (2, 3, 0)]),
        vec![],
    ];
    run_short_inputs(serial_control, &seeds, 0x5eed_5e71a1, 96);
}

/// A net input: `mode` (bit 0 rx, bit 1 mergeable), an rx frame length, then chains of
/// one or two descriptors at 0x1000, 0x1800, ... of `len` bytes, device-writable for rx.
fn net_seed(mode: u8, frame: u16, chains: &[(u32, bool)]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend(frame.to_le_bytes());
    let count: usize = chains.iter().map(|&(_, two)| 1 + usize::from(two)).sum();
    v.push((count - 1) as u8);
    let mut i = 0u8;
    for &(len, two) in chains {
        let addr = 0x1000 + 0x800 * u64::from(i);
        if two {
            v.extend(desc(addr, 12, mode & 1 != 0, Some(i + 1)));
            i += 1;
        }
        let addr = 0x1000 + 0x800 * u64::from(i);
        v.extend(desc(addr, len, mode & 1 != 0, None));
        i += 1;
    }
    v.extend(vec![0x42u8; 0x4000]);
    v
}

#[test]
fn net_chains_never_panic_and_report_consistently() {
    let seeds = [
        // tx: header and frame split, then in one buffer; too short; too long.
        net_seed(
            0,
            0,
            &[(60, true), (72, false), (20, false), (0x3fff, false)],
        ),
        // rx without mergeable buffers: fits, does not fit.
        net_seed(1, 100, &[(1500, false), (200, true)]),
        net_seed(1, 3000, &[(1500, false)]),
        // rx with mergeable buffers: one frame over three chains, a header-sized one.
        net_seed(
            3,
            2500,
            &[(1024, false), (1024, true), (1024, false), (12, false)],
        ),
        vec![],
        vec![0xff; 300],
    ];
    run_short_inputs(net_chains, &seeds, 0x2545_f491_4f6c_dd1d, 96);
}

fn qcow2_seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    [512u64, 4096, 65536]
        .iter()
        .map(|&cs| {
            let p = dir.path().join(format!("s{cs}.qcow2"));
            create_image(
                &p,
                &CreateOptions {
                    cluster_size: Some(cs),
                    ..CreateOptions::new(ImageFormat::Qcow2, Some(1 << 20))
                },
            )
            .unwrap();
            let d = crate::block::open_disk(&crate::block::DiskConfig::new(p.clone())).unwrap();
            d.write_at(&[0xab; 8192], 4096).unwrap();
            d.write_at(&[0xcd; 512], 700 * 1024).unwrap();
            drop(d);
            std::fs::read(p).unwrap()
        })
        .collect()
}

#[test]
fn qcow2_metadata_never_panics() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    for seed in qcow2_seeds() {
        qcow2_metadata(&seed);
        for _ in 0..2000 {
            let span = if rng.next() % 2 == 0 { 120 } else { seed.len() };
            qcow2_metadata(&mutate(&seed, &mut rng, span));
        }
    }
}

#[test]
fn qcow2_open_and_read_never_panics() {
    let mut rng = XorShift(0x0bad_cafe_f00d_d00d);
    for seed in qcow2_seeds() {
        qcow2_open_and_read(&seed);
        for _ in 0..150 {
            let span = if rng.next() % 2 == 0 { 120 } else { seed.len() };
            qcow2_open_and_read(&mutate(&seed, &mut rng, span));
        }
    }
}

/// A write input: `ops` (kind, block, blocks) before a qcow2 image.
fn write_input(ops: &[(u8, u16, u8)], image: &[u8]) -> Vec<u8> {
    let mut v = vec![ops.len() as u8];
    for &(kind, block, blocks) in ops {
        v.push(kind);
        v.extend(block.to_le_bytes());
        v.push(blocks.saturating_sub(1));
    }
    v.extend(image);
    v
}

#[test]
fn qcow2_writes_on_hostile_images_never_panic_and_read_back() {
    let dir = direct_io_dir().expect("no directory here takes O_DIRECT");
    let (write, zero, discard, flush, extent) = (0, 1, 2, 3, 4);
    // Allocate, then write in place; in place where the seed wrote already; into
    // zeroed and discarded blocks; past the seed's data clusters.
    let ops = [
        (write, 40, 2),
        (extent, 40, 1),
        (extent, 41, 1),
        (extent, 1, 2),
        (zero, 2, 1),
        (extent, 2, 1),
        (discard, 1, 1),
        (extent, 1, 1),
        (flush, 0, 1),
        (extent, 175, 1),
        (write, 175, 4),
        (extent, 176, 3),
        (extent, 178, 1),
    ];
    let mut rng = XorShift(0x5eed_0fc0_ffee);
    let (mut opened, mut extent_writes) = (0, 0);
    for image in qcow2_seeds() {
        let seed = write_input(&ops, &image);
        let span = 1 + ops.len() * 4 + 120;
        let outcome = qcow2_write_in(&dir, &seed);
        assert!(outcome.opened && outcome.extent_writes >= 4, "{outcome:?}");
        for _ in 0..400 {
            let whole = rng.next() % 2 == 0;
            let input = mutate(&seed, &mut rng, if whole { seed.len() } else { span });
            let outcome = qcow2_write_in(&dir, &input);
            opened += usize::from(outcome.opened);
            extent_writes += outcome.extent_writes;
        }
    }
    // The mutations must reach the writes, not stop at the open.
    assert!(
        opened > 100 && extent_writes > 100,
        "{opened} {extent_writes}"
    );
}

/// A console input: the client's pace, then `descs` (built with [`desc`]).
fn console_seed(pace: u8, descs: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![pace, (descs.len() - 1) as u8];
    for d in descs {
        v.extend(d);
    }
    v
}

#[test]
fn console_tx_never_panics_or_waits_on_a_drained_socket() {
    // Eight chains of 12 KiB (far more than the shrunk socket holds), read slowly.
    let big: Vec<Vec<u8>> = (0..8)
        .map(|i| desc(0x1000 + 0x3000 * i, 0x3000, false, None))
        .collect();
    // Two-buffer chains, one buffer past guest memory (top bit of byte 15 keeps the
    // address as given).
    let mut outside = desc(u64::MAX - 0x10, 0x100, false, None);
    outside[15] = 0x80;
    let mixed = vec![
        desc(0x1000, 0x3fff, false, Some(1)),
        outside,
        desc(0x8000, 0x2000, false, Some(3)),
        desc(0x9000, 0x10, true, None),
    ];
    // A descriptor loop.
    let looped = vec![
        desc(0x1000, 0x100, false, Some(1)),
        desc(0x2000, 0x100, false, Some(0)),
    ];
    let seeds = [
        console_seed(1, &big),
        console_seed(0, &big),
        console_seed(255, &mixed),
        console_seed(3, &looped),
        vec![],
    ];
    run_short_inputs(console_tx, &seeds, 0xc0_750e, 160);
}
