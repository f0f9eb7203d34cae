use super::*;
use crate::block::create::{create_image, CreateOptions};
use crate::block::ImageFormat;

/// A fresh 1 MiB qcow2 (4 KiB clusters) and its bytes.
fn image() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.qcow2");
    create_image(
        &path,
        &CreateOptions {
            cluster_size: Some(4096),
            ..CreateOptions::new(ImageFormat::Qcow2, Some(1 << 20))
        },
    )
    .unwrap();
    std::fs::read(path).unwrap()
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn parses_imago_created_image() {
    let b = image();
    let h = Qcow2Header::parse(&b).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.cluster_size(), 4096);
    assert_eq!(h.size, 1 << 20);
    assert_eq!(h.refcount_bits(), 16);
    h.check_layout(b.len() as u64).unwrap();
    let l1 = &b[h.l1_table_offset as usize..][..h.l1_size as usize * 8];
    h.check_l1_table(l1, b.len() as u64).unwrap();
}

#[test]
fn rejects_structural_damage() {
    let good = image();
    let parse = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        Qcow2Header::parse(&b).and_then(|h| h.check_layout(b.len() as u64).map(|_| h))
    };
    assert!(matches!(
        parse(&|b| b[0] = b'X'),
        Err(HeaderError::BadMagic(_))
    ));
    assert_eq!(parse(&|b| put32(b, 4, 4)), Err(HeaderError::Version(4)));
    assert_eq!(
        parse(&|b| put32(b, 20, 8)),
        Err(HeaderError::ClusterBits(8))
    );
    assert_eq!(
        parse(&|b| put32(b, 20, 22)),
        Err(HeaderError::ClusterBits(22))
    );
    assert_eq!(parse(&|b| put32(b, 32, 1)), Err(HeaderError::Encrypted(1)));
    assert_eq!(
        parse(&|b| put32(b, 96, 7)),
        Err(HeaderError::RefcountOrder(7))
    );
    assert_eq!(
        parse(&|b| put32(b, 100, 50)),
        Err(HeaderError::HeaderLength(50))
    );
    assert!(matches!(
        parse(&|b| put64(b, 40, 1 << 40)),
        Err(HeaderError::PastEnd {
            what: "L1 table",
            ..
        })
    ));
    assert!(matches!(
        parse(&|b| put64(b, 40, 4097)),
        Err(HeaderError::Unaligned {
            what: "L1 table",
            ..
        })
    ));
    assert!(matches!(
        parse(&|b| put64(b, 24, 1 << 40)),
        Err(HeaderError::L1TooSmall { .. })
    ));
    assert!(matches!(
        parse(&|b| {
            put64(b, 8, 4000);
            put32(b, 16, 200)
        }),
        Err(HeaderError::BackingName { .. })
    ));
    assert!(matches!(
        parse(&|b| b.truncate(50)),
        Err(HeaderError::TooShort(50))
    ));
}

#[test]
fn reads_backing_name_and_extensions() {
    let mut b = image();
    // Backing name in the spare space of the header cluster, plus a backing-format extension.
    let h0 = Qcow2Header::parse(&b).unwrap();
    let name = b"base.img";
    put64(&mut b, 8, 2048);
    put32(&mut b, 16, name.len() as u32);
    b[2048..2048 + name.len()].copy_from_slice(name);
    let ext = 112; // imago writes header_length 112
    put32(&mut b, 100, ext as u32);
    put32(&mut b, ext, EXT_BACKING_FORMAT);
    put32(&mut b, ext + 4, 3);
    b[ext + 8..ext + 11].copy_from_slice(b"raw");
    put32(&mut b, ext + 16, EXT_END);
    put32(&mut b, ext + 20, 0);
    let h = Qcow2Header::parse(&b).unwrap();
    assert_eq!(h.backing_file.as_deref(), Some("base.img"));
    assert_eq!(h.backing_format.as_deref(), Some("raw"));
    assert_eq!(h.size, h0.size);
    // An extension claiming to run past the first cluster.
    put32(&mut b, ext + 4, 100_000);
    assert_eq!(Qcow2Header::parse(&b), Err(HeaderError::Extension(ext)));
}

#[test]
fn reads_the_bitmaps_extension_and_refuses_a_short_one() {
    let mut b = image();
    let ext = 112;
    put32(&mut b, 100, ext as u32);
    put32(&mut b, ext, EXT_BITMAPS);
    put32(&mut b, ext + 4, 24);
    put32(&mut b, ext + 8, 2);
    put64(&mut b, ext + 16, 96);
    put64(&mut b, ext + 24, 0x3000);
    put32(&mut b, ext + 32, EXT_END);
    put32(&mut b, ext + 36, 0);
    let h = Qcow2Header::parse(&b).unwrap();
    let want = BitmapsExtension {
        count: 2,
        directory_size: 96,
        directory_offset: 0x3000,
    };
    assert_eq!(h.bitmaps, Some(want));
    // 16 bytes, then the end marker.
    put32(&mut b, ext + 4, 16);
    put64(&mut b, ext + 24, 0);
    assert_eq!(
        Qcow2Header::parse(&b),
        Err(HeaderError::BitmapsExtension(16))
    );
}

#[test]
fn l1_entries_checked() {
    let b = image();
    let h = Qcow2Header::parse(&b).unwrap();
    let len = b.len() as u64;
    let entry = |v: u64| v.to_be_bytes().to_vec();
    assert!(h.check_l1_table(&entry(0), len).is_ok());
    assert!(h.check_l1_table(&entry(1 << 63 | 4096), len).is_ok());
    assert!(matches!(
        h.check_l1_table(&entry(1 << 63 | (1 << 40)), len),
        Err(HeaderError::PastEnd {
            what: "L2 table",
            ..
        })
    ));
    assert!(matches!(
        h.check_l1_table(&entry(4096 + 512), len),
        Err(HeaderError::Unaligned {
            what: "L2 table",
            ..
        })
    ));
    assert!(matches!(
        h.check_l1_table(&entry(4096 | 2), len),
        Err(HeaderError::L1Reserved { index: 0, .. })
    ));
}
