//! The typed description of one disk, parsed once from the command line.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Disk image formats kiln reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    /// The name `qemu-img` uses.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ImageFormat {
    type Err = DiskConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            other => Err(DiskConfigError::Format(other.to_owned())),
        }
    }
}

/// Most request queues a disk may have (`num-queues`).
pub const MAX_QUEUES: u16 = 64;

/// Longest serial virtio-blk can report (VIRTIO_BLK_ID_BYTES).
pub const MAX_SERIAL_LEN: usize = 20;

/// Largest logical block size: Linux takes none larger than its page (4 KiB on x86).
pub const MAX_LOGICAL_BLOCK_SIZE: u32 = 4096;
/// Largest physical block size (QEMU's limit).
pub const MAX_PHYSICAL_BLOCK_SIZE: u32 = 2 << 20;

/// The block sizes the guest sees (QEMU's `logical_block_size` and
/// `physical_block_size`): the smallest unit it may address, and the unit it should
/// write whole to avoid read-modify-write. Both 512 by default, as in QEMU; 4096 for
/// both makes a 4Kn disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub logical: u32,
    pub physical: u32,
}

impl Default for BlockSizes {
    fn default() -> Self {
        BlockSizes {
            logical: 512,
            physical: 512,
        }
    }
}

impl BlockSizes {
    /// log2(physical / logical): virtio-blk's `physical_block_exp` (0 for sizes the
    /// option parser would refuse).
    pub fn physical_exponent(self) -> u8 {
        let ratio = self.physical.checked_div(self.logical).unwrap_or(1);
        ratio.checked_ilog2().unwrap_or(0) as u8
    }
}

/// A block size option's value: a power of two from 512 to `max` bytes, written in
/// bytes or with a `k` or `M` suffix (binary, as QEMU reads them).
fn parse_block_size(key: &'static str, value: &str, max: u32) -> Result<u32, DiskConfigError> {
    let (digits, unit) = if let Some(d) = value.strip_suffix(['k', 'K']) {
        (d, 1 << 10)
    } else if let Some(d) = value.strip_suffix(['m', 'M']) {
        (d, 1 << 20)
    } else {
        (value, 1)
    };
    digits
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| n.is_power_of_two() && (512..=max).contains(n))
        .ok_or_else(|| DiskConfigError::BlockSize {
            key,
            value: value.to_owned(),
            max,
        })
}

/// How virtio-blk reads and writes an image (QEMU's `aio=` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aio {
    /// A pool of I/O threads doing blocking reads and writes.
    Threads,
    /// One io_uring per queue: every read and write of a raw image, and the reads of
    /// a qcow2 image's own data clusters (with [`Cache::None`], the writes into them
    /// too); the rest on the I/O threads.
    IoUring,
}

/// What a guest FLUSH does (QEMU's `cache=` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cache {
    /// Writes go through the host page cache; a guest FLUSH writes back the image's
    /// metadata and fsyncs it.
    #[default]
    Writeback,
    /// Guest FLUSHes succeed at once and nothing is synced: faster for throw-away
    /// runs and image builds (an installer fsyncs per package), but a host crash
    /// loses data and may leave a qcow2 image inconsistent. kiln still writes the
    /// metadata back when it closes the image.
    Unsafe,
    /// As writeback, but the image and its backing files bypass the host page cache
    /// (O_DIRECT): the guest's own cache is the only one, so a guest does not hold its
    /// disk twice in host memory, and cold reads skip the page cache's work. Needs a
    /// file system with direct I/O (most have; refused at open where not). Requests
    /// that are not aligned as direct I/O requires go through the page cache instead.
    None,
    /// As writeback, but the device starts with its cache off: every write is synced
    /// before it completes, until the guest turns the cache on (VIRTIO_BLK_F_CONFIG_WCE;
    /// Linux: /sys/block/vdX/cache_type). QEMU's `cache=writethrough`.
    Writethrough,
    /// [`Cache::None`] and [`Cache::Writethrough`] together.
    Directsync,
}

impl Cache {
    /// Every mode, by its name in `cache=`.
    pub const NAMES: [(&'static str, Cache); 5] = [
        ("writeback", Cache::Writeback),
        ("none", Cache::None),
        ("writethrough", Cache::Writethrough),
        ("directsync", Cache::Directsync),
        ("unsafe", Cache::Unsafe),
    ];

    /// Its name in `cache=` (QEMU's).
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("writeback", |(name, _)| name)
    }

    /// Whether a guest FLUSH syncs the image.
    pub fn flushes(self) -> bool {
        self != Cache::Unsafe
    }

    /// Whether the image is opened with O_DIRECT.
    pub fn direct(self) -> bool {
        matches!(self, Cache::None | Cache::Directsync)
    }

    /// Whether the device starts writethrough (the guest may change it).
    pub fn starts_writethrough(self) -> bool {
        matches!(self, Cache::Writethrough | Cache::Directsync)
    }
}

/// What a guest's discards do (QEMU's `discard=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Discard {
    /// Discards free the image's space (holes in a raw file, unallocated or zero
    /// clusters in qcow2), and so may write-zeroes with the UNMAP flag.
    #[default]
    Unmap,
    /// Discards succeed and change nothing; write-zeroes keep the space allocated.
    /// For images that must stay preallocated.
    Ignore,
}

/// Whether guest writes of zeroes are stored as zeroes or detected (QEMU's
/// `detect-zeroes=`): with `zerofree` or `dd if=/dev/zero` in the guest, unmap keeps an
/// image sparse without the guest knowing about discard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DetectZeroes {
    /// Written as data.
    #[default]
    Off,
    /// Written as write-zeroes (zero clusters in qcow2; the space stays allocated).
    On,
    /// Written as write-zeroes that free the space (needs discard=unmap).
    Unmap,
}

/// One disk: `path=FILE[,format=qcow2|raw][,readonly=on][,serial=ID]
/// [,aio=threads|io_uring][,cache=writeback|none|writethrough|directsync|unsafe]
/// [,num-queues=N][,discard=unmap|ignore][,detect-zeroes=off|on|unmap]
/// [,logical_block_size=B][,physical_block_size=B]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// `None`: detect from the file's contents.
    pub format: Option<ImageFormat>,
    pub readonly: bool,
    /// Reported to the guest through VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    pub serial: Option<String>,
    /// `None`: io_uring where the host allows it (see [`Aio::IoUring`]), else threads.
    pub aio: Option<Aio>,
    pub cache: Cache,
    /// Request queues offered to the guest (QEMU's `num-queues`); Linux uses up to one
    /// per vCPU.
    pub num_queues: u16,
    /// Read-only and keeping nobody from writing (qemu-img's `-U`); for image commands,
    /// not `--disk`: a guest must not read an image that changes under it.
    pub force_share: bool,
    pub discard: Discard,
    pub detect_zeroes: DetectZeroes,
    pub block_sizes: BlockSizes,
}

impl DiskConfig {
    /// `path` with every option at its default, as `--disk path=FILE`: format detected,
    /// read-write, no serial, io_uring where available, cache=writeback.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DiskConfig {
            path: path.into(),
            format: None,
            readonly: false,
            serial: None,
            aio: None,
            cache: Cache::Writeback,
            num_queues: 1,
            force_share: false,
            discard: Discard::Unmap,
            detect_zeroes: DetectZeroes::Off,
            block_sizes: BlockSizes::default(),
        }
    }

    /// `path` opened only to be read (an input, a backing file): read-only, in
    /// `format` (detected when `None`), other options at their defaults.
    pub fn read_only(path: impl Into<PathBuf>, format: Option<ImageFormat>) -> Self {
        DiskConfig {
            format,
            readonly: true,
            ..DiskConfig::new(path)
        }
    }
}

/// What is wrong with a `--disk` option string.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiskConfigError {
    #[error("disk option is missing `path=FILE`")]
    MissingPath,
    #[error("disk option `{0}` is not KEY=VALUE")]
    NotKeyValue(String),
    #[error(
        "unknown disk option key `{0}` (expected path, format, readonly, serial, aio, cache, \
         num-queues, discard, detect-zeroes, logical_block_size or physical_block_size)"
    )]
    UnknownKey(String),
    #[error("disk option `{0}` given twice")]
    Duplicate(String),
    #[error("unknown disk format `{0}` (expected qcow2 or raw)")]
    Format(String),
    #[error("readonly must be on or off, not `{0}`")]
    ReadOnly(String),
    #[error("serial `{0}` is longer than {MAX_SERIAL_LEN} bytes")]
    SerialTooLong(String),
    #[error("aio must be threads or io_uring, not `{0}`")]
    Aio(String),
    #[error("cache must be writeback, none, writethrough, directsync or unsafe, not `{0}`")]
    Cache(String),
    #[error("disk path is empty")]
    EmptyPath,
    #[error("num-queues must be 1 to {MAX_QUEUES}, not `{0}`")]
    NumQueues(String),
    #[error("discard must be unmap or ignore, not `{0}`")]
    Discard(String),
    #[error("detect-zeroes must be off, on or unmap, not `{0}`")]
    DetectZeroes(String),
    #[error("detect-zeroes=unmap needs discard=unmap (it frees space as a discard does)")]
    UnmapWithoutDiscard,
    #[error("{key} must be a power of two from 512 to {max} bytes, not `{value}`")]
    BlockSize {
        key: &'static str,
        value: String,
        max: u32,
    },
    #[error("physical_block_size {physical} is smaller than logical_block_size {logical}")]
    PhysicalBelowLogical { logical: u32, physical: u32 },
}

impl FromStr for DiskConfig {
    type Err = DiskConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut path = None;
        let mut format = None;
        let mut readonly = None;
        let mut serial = None;
        let mut aio = None;
        let mut cache = None;
        let mut num_queues = None;
        let mut discard = None;
        let mut detect_zeroes = None;
        let mut logical = None;
        let mut physical = None;
        for item in s.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| DiskConfigError::NotKeyValue(item.to_owned()))?;
            let duplicate = || DiskConfigError::Duplicate(key.to_owned());
            match key {
                "path" => {
                    if value.is_empty() {
                        return Err(DiskConfigError::EmptyPath);
                    }
                    path.replace(PathBuf::from(value))
                        .map_or(Ok(()), |_| Err(duplicate()))?
                }
                "format" => format
                    .replace(value.parse::<ImageFormat>()?)
                    .map_or(Ok(()), |_| Err(duplicate()))?,
                "readonly" => {
                    let v = match value {
                        "on" | "true" | "yes" => true,
                        "off" | "false" | "no" => false,
                        other => return Err(DiskConfigError::ReadOnly(other.to_owned())),
                    };
                    readonly.replace(v).map_or(Ok(()), |_| Err(duplicate()))?
                }
                "serial" => {
                    if value.len() > MAX_SERIAL_LEN {
                        return Err(DiskConfigError::SerialTooLong(value.to_owned()));
                    }
                    serial
                        .replace(value.to_owned())
                        .map_or(Ok(()), |_| Err(duplicate()))?
                }
                "aio" => {
                    let v = match value {
                        "threads" => Aio::Threads,
                        "io_uring" => Aio::IoUring,
                        other => return Err(DiskConfigError::Aio(other.to_owned())),
                    };
                    aio.replace(v).map_or(Ok(()), |_| Err(duplicate()))?
                }
                "cache" => {
                    let v = Cache::NAMES
                        .iter()
                        .find(|(name, _)| *name == value)
                        .map(|&(_, c)| c)
                        .ok_or_else(|| DiskConfigError::Cache(value.to_owned()))?;
                    cache.replace(v).map_or(Ok(()), |_| Err(duplicate()))?
                }
                "num-queues" => {
                    let n = value
                        .parse::<u16>()
                        .ok()
                        .filter(|n| (1..=MAX_QUEUES).contains(n))
                        .ok_or_else(|| DiskConfigError::NumQueues(value.to_owned()))?;
                    num_queues.replace(n).map_or(Ok(()), |_| Err(duplicate()))?
                }
                "discard" => {
                    let v = match value {
                        "unmap" | "on" => Discard::Unmap,
                        "ignore" | "off" => Discard::Ignore,
                        other => return Err(DiskConfigError::Discard(other.to_owned())),
                    };
                    discard.replace(v).map_or(Ok(()), |_| Err(duplicate()))?
                }
                "detect-zeroes" => {
                    let v = match value {
                        "off" => DetectZeroes::Off,
                        "on" => DetectZeroes::On,
                        "unmap" => DetectZeroes::Unmap,
                        other => return Err(DiskConfigError::DetectZeroes(other.to_owned())),
                    };
                    detect_zeroes
                        .replace(v)
                        .map_or(Ok(()), |_| Err(duplicate()))?
                }
                "logical_block_size" => {
                    let size =
                        parse_block_size("logical_block_size", value, MAX_LOGICAL_BLOCK_SIZE)?;
                    logical.replace(size).map_or(Ok(()), |_| Err(duplicate()))?
                }
                "physical_block_size" => {
                    let size =
                        parse_block_size("physical_block_size", value, MAX_PHYSICAL_BLOCK_SIZE)?;
                    physical
                        .replace(size)
                        .map_or(Ok(()), |_| Err(duplicate()))?
                }
                other => return Err(DiskConfigError::UnknownKey(other.to_owned())),
            }
        }
        // An unset physical size follows the logical one (QEMU's stays 512 and then
        // refuses a larger logical size).
        let logical = logical.unwrap_or(512);
        let physical = physical.unwrap_or(logical);
        if physical < logical {
            return Err(DiskConfigError::PhysicalBelowLogical { logical, physical });
        }
        Ok(DiskConfig {
            path: path.ok_or(DiskConfigError::MissingPath)?,
            format,
            readonly: readonly.unwrap_or(false),
            serial,
            aio,
            cache: cache.unwrap_or_default(),
            num_queues: num_queues.unwrap_or(1),
            force_share: false,
            discard: discard.unwrap_or_default(),
            detect_zeroes: detect_zeroes.unwrap_or_default(),
            block_sizes: BlockSizes { logical, physical },
        })
        .and_then(|c: DiskConfig| {
            if c.detect_zeroes == DetectZeroes::Unmap && c.discard == Discard::Ignore {
                return Err(DiskConfigError::UnmapWithoutDiscard);
            }
            Ok(c)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_keys() {
        let c: DiskConfig = "path=/tmp/a.qcow2,format=qcow2,readonly=on,serial=disk-1,aio=threads"
            .parse()
            .unwrap();
        assert_eq!(c.path, PathBuf::from("/tmp/a.qcow2"));
        assert_eq!(c.format, Some(ImageFormat::Qcow2));
        assert!(c.readonly);
        assert_eq!(c.serial.as_deref(), Some("disk-1"));
        assert_eq!(c.aio, Some(Aio::Threads));
        let c: DiskConfig = "path=a.raw,aio=io_uring,cache=unsafe,num-queues=4"
            .parse()
            .unwrap();
        assert_eq!(c.aio, Some(Aio::IoUring));
        assert_eq!(c.cache, Cache::Unsafe);
        assert_eq!(c.num_queues, 4);
        let c: DiskConfig = "path=a,cache=none".parse().unwrap();
        assert_eq!(c.cache, Cache::None);
        assert!(c.cache.direct() && c.cache.flushes());
        assert!(!Cache::Writeback.direct() && !Cache::Unsafe.flushes());
        for (name, want) in Cache::NAMES {
            let c: DiskConfig = format!("path=a,cache={name}").parse().unwrap();
            assert_eq!(c.cache, want);
            assert_eq!(want.name(), name);
        }
        assert!(Cache::Directsync.direct() && Cache::Directsync.starts_writethrough());
        assert!(!Cache::Writethrough.direct() && Cache::Writethrough.starts_writethrough());
        assert!(!Cache::None.starts_writethrough() && Cache::Writethrough.flushes());
        let c: DiskConfig = "path=a,discard=ignore,detect-zeroes=on".parse().unwrap();
        assert_eq!(
            (c.discard, c.detect_zeroes),
            (Discard::Ignore, DetectZeroes::On)
        );
        let c: DiskConfig = "path=a,detect-zeroes=unmap".parse().unwrap();
        assert_eq!(
            (c.discard, c.detect_zeroes),
            (Discard::Unmap, DetectZeroes::Unmap)
        );
    }

    #[test]
    fn defaults() {
        let c: DiskConfig = "path=disk.img".parse().unwrap();
        assert_eq!(c.format, None);
        assert!(!c.readonly);
        assert_eq!(c.serial, None);
        assert_eq!(c.aio, None);
        assert_eq!(c.cache, Cache::Writeback);
        assert_eq!(c.num_queues, 1);
        assert_eq!(c.discard, Discard::Unmap);
        assert_eq!(c.detect_zeroes, DetectZeroes::Off);
    }

    #[test]
    fn block_sizes() {
        let sizes = |s: &str| s.parse::<DiskConfig>().unwrap().block_sizes;
        let bs = |logical, physical| BlockSizes { logical, physical };
        assert_eq!(sizes("path=a"), bs(512, 512));
        // Physical follows logical unless given.
        assert_eq!(sizes("path=a,logical_block_size=4096"), bs(4096, 4096));
        assert_eq!(sizes("path=a,physical_block_size=4k"), bs(512, 4096));
        assert_eq!(
            sizes("path=a,logical_block_size=1K,physical_block_size=2M"),
            bs(1024, 2 << 20)
        );
        assert_eq!(bs(512, 4096).physical_exponent(), 3);
        assert_eq!(bs(4096, 4096).physical_exponent(), 0);
        // Sizes the parser refuses give 0, not a panic.
        assert_eq!(bs(0, 512).physical_exponent(), 0);
        assert_eq!(bs(4096, 512).physical_exponent(), 0);

        use DiskConfigError::*;
        let e = |s: &str| s.parse::<DiskConfig>().unwrap_err();
        let logical = |v: &str| BlockSize {
            key: "logical_block_size",
            value: v.into(),
            max: 4096,
        };
        for bad in ["1000", "256", "8192", "0", "", "4x", "k", "4294967296"] {
            assert_eq!(e(&format!("path=a,logical_block_size={bad}")), logical(bad));
        }
        assert_eq!(
            e("path=a,physical_block_size=4M"),
            BlockSize {
                key: "physical_block_size",
                value: "4M".into(),
                max: 2 << 20
            }
        );
        assert_eq!(
            e("path=a,logical_block_size=4096,physical_block_size=512"),
            PhysicalBelowLogical {
                logical: 4096,
                physical: 512
            }
        );
        assert_eq!(
            e("path=a,logical_block_size=512,logical_block_size=512"),
            Duplicate("logical_block_size".into())
        );
        let message = e("path=a,logical_block_size=8192").to_string();
        assert_eq!(
            message,
            "logical_block_size must be a power of two from 512 to 4096 bytes, not `8192`"
        );
    }

    #[test]
    fn rejects_bad_input() {
        use DiskConfigError::*;
        let e = |s: &str| s.parse::<DiskConfig>().unwrap_err();
        assert_eq!(e("format=raw"), MissingPath);
        assert_eq!(e("path=a,format=vmdk"), Format("vmdk".into()));
        assert_eq!(e("path=a,readonly=maybe"), ReadOnly("maybe".into()));
        assert_eq!(e("path=a,cache=directio"), Cache("directio".into()));
        assert_eq!(e("path=a,trim=unmap"), UnknownKey("trim".into()));
        assert_eq!(e("path=a,discard=maybe"), Discard("maybe".into()));
        assert_eq!(e("path=a,detect-zeroes=yes"), DetectZeroes("yes".into()));
        assert_eq!(
            e("path=a,discard=ignore,detect-zeroes=unmap"),
            UnmapWithoutDiscard
        );
        assert_eq!(
            e("path=a,discard=unmap,discard=ignore"),
            Duplicate("discard".into())
        );
        assert_eq!(
            e("path=a,cache=unsafe,cache=writeback"),
            Duplicate("cache".into())
        );
        assert_eq!(e("path=a,path=b"), Duplicate("path".into()));
        assert_eq!(e("path=a,aio=native"), Aio("native".into()));
        assert_eq!(
            e("path=a,aio=threads,aio=io_uring"),
            Duplicate("aio".into())
        );
        assert_eq!(e("path=a,readonly"), NotKeyValue("readonly".into()));
        assert_eq!(e("path="), EmptyPath);
        for n in ["0", "65", "two", "-1"] {
            assert_eq!(e(&format!("path=a,num-queues={n}")), NumQueues(n.into()));
        }
        assert_eq!(
            e("path=a,num-queues=2,num-queues=2"),
            Duplicate("num-queues".into())
        );
        assert_eq!(
            e("path=a,serial=123456789012345678901"),
            SerialTooLong("123456789012345678901".into())
        );
    }
}
