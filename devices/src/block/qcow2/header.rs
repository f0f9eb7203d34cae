//! kiln's own reading of the qcow2 header, the header extensions and the L1 table.
//!
//! imago does the I/O; this runs first so that images imago would refuse with a
//! generic message (dirty, corrupt, extended L2, zstd), and structurally broken images,
//! get an error naming the exact problem. It treats every byte as hostile.

/// "QFI\xfb"
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Byte offsets of the fixed header fields (qcow2 spec, "Header"), big-endian.
pub(super) mod field {
    pub const VERSION: usize = 4;
    /// Backing file name: offset (u64), then length (u32).
    pub const BACKING_FILE_OFFSET: usize = 8;
    pub const BACKING_FILE_SIZE: usize = 16;
    pub const CLUSTER_BITS: usize = 20;
    pub const SIZE: usize = 24;
    pub const CRYPT_METHOD: usize = 32;
    pub const L1_SIZE: usize = 36;
    pub const L1_TABLE_OFFSET: usize = 40;
    /// Refcount table: offset (u64), then length in clusters (u32).
    pub const REFCOUNT_TABLE_OFFSET: usize = 48;
    pub const REFCOUNT_TABLE_CLUSTERS: usize = 56;
    pub const NB_SNAPSHOTS: usize = 60;
    pub const SNAPSHOTS_OFFSET: usize = 64;
    /// Version 3 only from here on.
    pub const INCOMPATIBLE_FEATURES: usize = 72;
    pub const COMPATIBLE_FEATURES: usize = 80;
    pub const AUTOCLEAR_FEATURES: usize = 88;
    pub const REFCOUNT_ORDER: usize = 96;
    pub const HEADER_LENGTH: usize = 100;
    /// The optional byte after the 104-byte minimum.
    pub const COMPRESSION_TYPE: usize = 104;
}

const V2_HEADER_LEN: usize = field::INCOMPATIBLE_FEATURES;
const V3_HEADER_MIN_LEN: usize = field::COMPRESSION_TYPE;
pub(super) const MAX_BACKING_NAME: u32 = 1023;

pub(super) const EXT_END: u32 = 0;
pub(super) const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_BITMAPS: u32 = 0x2385_2875;

/// Incompatible feature bits (qcow2 spec).
pub mod incompat {
    pub const DIRTY: u64 = 1 << 0;
    pub const CORRUPT: u64 = 1 << 1;
    pub const DATA_FILE: u64 = 1 << 2;
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    pub const EXTENDED_L2: u64 = 1 << 4;
    pub const KNOWN: u64 = DIRTY | CORRUPT | DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2;
}

/// L1 entry: bits 9..=55 hold the L2 table offset.
const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1 entry bits that must be zero (1..=8 and 56..=62).
const L1_RESERVED_MASK: u64 = 0x7f00_0000_0000_01fe;

/// A structural problem in a qcow2 header or L1 table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("file is {0} bytes, too short for a qcow2 header")]
    TooShort(usize),
    #[error("bad magic {0:02x?}, not a qcow2 image")]
    BadMagic([u8; 4]),
    #[error("qcow2 version {0} is not supported (only 2 and 3)")]
    Version(u32),
    #[error("cluster_bits {0} is outside 9..=21 (512 B to 2 MiB clusters)")]
    ClusterBits(u32),
    #[error("encrypted images (crypt_method {0}) are not supported")]
    Encrypted(u32),
    #[error("header_length {0} is invalid")]
    HeaderLength(u32),
    #[error("refcount_order {0} is larger than 6")]
    RefcountOrder(u32),
    #[error(
        "backing file name ({len} bytes at offset {offset}) does not fit in the first cluster"
    )]
    BackingName { offset: u64, len: u32 },
    #[error("backing file name is not valid UTF-8")]
    BackingNameUtf8,
    #[error("header extension at offset {0} runs past the first cluster")]
    Extension(usize),
    #[error("the bitmaps header extension is {0} bytes, not 24")]
    BitmapsExtension(usize),
    #[error("virtual size {size} needs {needed} L1 entries but l1_size is {l1_size}")]
    L1TooSmall {
        size: u64,
        needed: u64,
        l1_size: u32,
    },
    #[error("{what} at offset {offset} is not aligned to the cluster size {cluster_size}")]
    Unaligned {
        what: &'static str,
        offset: u64,
        cluster_size: u64,
    },
    #[error("{what} ({offset} + {len} bytes) extends past the end of the file ({file_len} bytes)")]
    PastEnd {
        what: &'static str,
        offset: u64,
        len: u64,
        file_len: u64,
    },
    #[error("L1 entry {index} ({entry:#018x}) has reserved bits set")]
    L1Reserved { index: usize, entry: u64 },
}

/// The fields of a qcow2 header kiln uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    /// Bit 0: the persistent dirty bitmaps extension is valid (see `bitmaps`).
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub compression_type: u8,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub data_file: Option<String>,
    pub bitmaps: Option<BitmapsExtension>,
}

/// The bitmaps header extension: where the bitmap directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapsExtension {
    pub count: u32,
    pub directory_size: u64,
    pub directory_offset: u64,
}

/// Big-endian fields of qcow2 metadata at byte `at` of `b` (which must hold them).
pub(super) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(super) fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// Where the header extensions of the header `first` start: after the fixed v2
/// header, or after a v3 header's `header_length`, 8-byte aligned. Call only on bytes
/// [`Qcow2Header::parse`] accepted.
pub(super) fn extensions_start(first: &[u8]) -> usize {
    match be32(first, field::VERSION) {
        3 => (be32(first, field::HEADER_LENGTH) as usize).next_multiple_of(8),
        _ => V2_HEADER_LEN,
    }
}

/// The header extensions from byte `at` up to the end marker, as (type, data).
pub(super) fn raw_extensions(
    first: &[u8],
    mut at: usize,
) -> Result<Vec<(u32, &[u8])>, HeaderError> {
    let mut found = Vec::new();
    loop {
        if at + 8 > first.len() {
            // v2 images without extensions may end right after the header.
            return if at >= first.len() {
                Ok(found)
            } else {
                Err(HeaderError::Extension(at))
            };
        }
        let kind = be32(first, at);
        let len = be32(first, at + 4) as usize;
        let data_start = at + 8;
        let data_end = data_start
            .checked_add(len)
            .filter(|&e| e <= first.len())
            .ok_or(HeaderError::Extension(at))?;
        if kind == EXT_END {
            return Ok(found);
        }
        found.push((kind, &first[data_start..data_end]));
        at = data_start + len.next_multiple_of(8);
    }
}

impl Qcow2Header {
    /// Parse the header from the start of the file. `first` should hold the first cluster
    /// (or the whole file, if shorter); extensions and the backing name must lie in it.
    pub fn parse(first: &[u8]) -> Result<Self, HeaderError> {
        if first.len() < 4 {
            return Err(HeaderError::TooShort(first.len()));
        }
        let magic = [first[0], first[1], first[2], first[3]];
        if magic != QCOW2_MAGIC {
            return Err(HeaderError::BadMagic(magic));
        }
        if first.len() < V2_HEADER_LEN {
            return Err(HeaderError::TooShort(first.len()));
        }
        let version = be32(first, field::VERSION);
        if version != 2 && version != 3 {
            return Err(HeaderError::Version(version));
        }
        let cluster_bits = be32(first, field::CLUSTER_BITS);
        if !(9..=21).contains(&cluster_bits) {
            return Err(HeaderError::ClusterBits(cluster_bits));
        }
        let crypt = be32(first, field::CRYPT_METHOD);
        if crypt != 0 {
            return Err(HeaderError::Encrypted(crypt));
        }
        let cluster_size = 1usize << cluster_bits;
        // Everything else must come from within the first cluster.
        let first = &first[..first.len().min(cluster_size)];

        let mut h = Qcow2Header {
            version,
            cluster_bits,
            size: be64(first, field::SIZE),
            l1_size: be32(first, field::L1_SIZE),
            l1_table_offset: be64(first, field::L1_TABLE_OFFSET),
            refcount_table_offset: be64(first, field::REFCOUNT_TABLE_OFFSET),
            refcount_table_clusters: be32(first, field::REFCOUNT_TABLE_CLUSTERS),
            nb_snapshots: be32(first, field::NB_SNAPSHOTS),
            snapshots_offset: be64(first, field::SNAPSHOTS_OFFSET),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            compression_type: 0,
            backing_file: None,
            backing_format: None,
            data_file: None,
            bitmaps: None,
        };

        if version == 3 {
            if first.len() < V3_HEADER_MIN_LEN {
                return Err(HeaderError::TooShort(first.len()));
            }
            h.incompatible_features = be64(first, field::INCOMPATIBLE_FEATURES);
            h.compatible_features = be64(first, field::COMPATIBLE_FEATURES);
            h.autoclear_features = be64(first, field::AUTOCLEAR_FEATURES);
            h.refcount_order = be32(first, field::REFCOUNT_ORDER);
            let header_len = be32(first, field::HEADER_LENGTH);
            if (header_len as usize) < V3_HEADER_MIN_LEN || header_len as usize > first.len() {
                return Err(HeaderError::HeaderLength(header_len));
            }
            if header_len as usize > V3_HEADER_MIN_LEN {
                h.compression_type = first[field::COMPRESSION_TYPE];
            }
            if h.refcount_order > 6 {
                return Err(HeaderError::RefcountOrder(h.refcount_order));
            }
        }

        let backing_offset = be64(first, field::BACKING_FILE_OFFSET);
        let backing_len = be32(first, field::BACKING_FILE_SIZE);
        if backing_offset != 0 {
            let end = backing_offset.checked_add(u64::from(backing_len));
            if backing_len > MAX_BACKING_NAME || end.is_none_or(|e| e > first.len() as u64) {
                return Err(HeaderError::BackingName {
                    offset: backing_offset,
                    len: backing_len,
                });
            }
            let name =
                &first[backing_offset as usize..(backing_offset as usize + backing_len as usize)];
            let name = std::str::from_utf8(name).map_err(|_| HeaderError::BackingNameUtf8)?;
            h.backing_file = Some(name.to_owned());
        }

        h.parse_extensions(first, extensions_start(first))?;
        Ok(h)
    }

    fn parse_extensions(&mut self, first: &[u8], at: usize) -> Result<(), HeaderError> {
        for (kind, data) in raw_extensions(first, at)? {
            let text = || String::from_utf8_lossy(data).into_owned();
            match kind {
                EXT_BACKING_FORMAT => self.backing_format = Some(text()),
                EXT_DATA_FILE => self.data_file = Some(text()),
                EXT_BITMAPS if data.len() >= 24 => {
                    self.bitmaps = Some(BitmapsExtension {
                        count: be32(data, 0),
                        directory_size: be64(data, 8),
                        directory_offset: be64(data, 16),
                    })
                }
                EXT_BITMAPS => return Err(HeaderError::BitmapsExtension(data.len())),
                _ => {}
            }
        }
        Ok(())
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// "0.10" for version 2, "1.1" for version 3, as qemu-img names them.
    pub fn compat(&self) -> &'static str {
        if self.version == 2 {
            "0.10"
        } else {
            "1.1"
        }
    }

    /// Check the L1 and refcount tables' placement against the file length.
    pub fn check_layout(&self, file_len: u64) -> Result<(), HeaderError> {
        let cs = self.cluster_size();
        // One L2 table maps cluster_size / 8 clusters.
        let bytes_per_l1_entry = cs * (cs / 8);
        let needed = self.size.div_ceil(bytes_per_l1_entry);
        if u64::from(self.l1_size) < needed {
            return Err(HeaderError::L1TooSmall {
                size: self.size,
                needed,
                l1_size: self.l1_size,
            });
        }
        let table = |what, offset: u64, len: u64| {
            if offset % cs != 0 {
                return Err(HeaderError::Unaligned {
                    what,
                    offset,
                    cluster_size: cs,
                });
            }
            if offset.checked_add(len).is_none_or(|end| end > file_len) {
                return Err(HeaderError::PastEnd {
                    what,
                    offset,
                    len,
                    file_len,
                });
            }
            Ok(())
        };
        if self.l1_size > 0 {
            table(
                "L1 table",
                self.l1_table_offset,
                u64::from(self.l1_size) * 8,
            )?;
        }
        table(
            "refcount table",
            self.refcount_table_offset,
            u64::from(self.refcount_table_clusters) * cs,
        )
    }

    /// Check every L1 entry: reserved bits clear, L2 tables aligned and inside the file.
    pub fn check_l1_table(&self, l1: &[u8], file_len: u64) -> Result<(), HeaderError> {
        let cs = self.cluster_size();
        for (index, raw) in l1.chunks_exact(8).enumerate() {
            let entry = be64(raw, 0);
            if entry & L1_RESERVED_MASK != 0 {
                return Err(HeaderError::L1Reserved { index, entry });
            }
            let offset = entry & L1_OFFSET_MASK;
            if offset == 0 {
                continue;
            }
            if offset % cs != 0 {
                return Err(HeaderError::Unaligned {
                    what: "L2 table",
                    offset,
                    cluster_size: cs,
                });
            }
            if offset.checked_add(cs).is_none_or(|end| end > file_len) {
                return Err(HeaderError::PastEnd {
                    what: "L2 table",
                    offset,
                    len: cs,
                    file_len,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
