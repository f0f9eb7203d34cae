//! Sizes of a qcow2 image's structures, as QEMU bounds and computes them: the cluster
//! sizes it accepts, how many L1 entries an image needs and how many it allows, and
//! the refcount structures that count a number of clusters. Shared by `kiln img
//! measure` and kiln's streaming qcow2 writer (`kiln img convert`), so that both
//! apply the same rules.

/// Cluster sizes qcow2 allows, in bits: 512 B to 2 MiB.
pub const CLUSTER_BITS: std::ops::RangeInclusive<u32> = 9..=21;

/// L1 tables larger than 32 MiB are refused by QEMU (QCOW_MAX_L1_SIZE).
pub const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;

/// log2 of `cluster_size`, if qcow2 allows that size.
pub fn cluster_bits(cluster_size: u64) -> Result<u32, String> {
    let bits = cluster_size.trailing_zeros();
    if cluster_size.is_power_of_two() && CLUSTER_BITS.contains(&bits) {
        Ok(bits)
    } else {
        Err(format!(
            "cluster size {cluster_size} is not a power of two from 512 to 2097152 (2 MiB)"
        ))
    }
}

/// L1 entries (one per L2 table) an image of `virtual_size` bytes needs with clusters
/// of `cluster_size` bytes.
pub fn l1_entries(virtual_size: u64, cluster_size: u64) -> u64 {
    virtual_size
        .div_ceil(cluster_size)
        .div_ceil(cluster_size / 8)
}

/// Refcount blocks and refcount table clusters (16-bit refcounts) that count
/// `clusters` clusters of `cluster_size` bytes and themselves.
pub fn refcount_structures(clusters: u64, cluster_size: u64) -> (u64, u64) {
    let refcounts_per_block = cluster_size / 2;
    let blocks_per_table_cluster = cluster_size / 8;
    let (mut blocks, mut table) = (0u64, 0u64);
    loop {
        let b = (clusters + blocks + table).div_ceil(refcounts_per_block);
        let t = b.div_ceil(blocks_per_table_cluster);
        if (b, t) == (blocks, table) {
            return (blocks, table);
        }
        (blocks, table) = (b, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_structures_cover_themselves() {
        const CS: u64 = 65536;
        assert_eq!(refcount_structures(10, CS), (1, 1));
        // 32766 + 1 block + 1 table = 32768: still one block.
        assert_eq!(refcount_structures(32766, CS), (1, 1));
        // One more and the second block must cover itself too.
        assert_eq!(refcount_structures(32767, CS), (2, 1));
        let (b, t) = refcount_structures(8192 * 32768, CS);
        assert!(b * (CS / 2) >= 8192 * 32768 + b + t);
        assert!(t * (CS / 8) >= b && t == 2);
        // 512 B clusters: 256 refcounts per block, 64 reftable entries per cluster.
        assert_eq!(refcount_structures(254, 512), (1, 1));
        assert_eq!(refcount_structures(255, 512), (2, 1));
    }

    #[test]
    fn cluster_sizes_and_l1_entries() {
        assert_eq!(cluster_bits(512), Ok(9));
        assert_eq!(cluster_bits(2 << 20), Ok(21));
        for bad in [0, 256, 3072, 4 << 20] {
            assert!(
                cluster_bits(bad).unwrap_err().contains(&bad.to_string()),
                "{bad}"
            );
        }
        // 64 KiB clusters: one L2 table maps 512 MiB.
        assert_eq!(l1_entries(512 << 20, 65536), 1);
        assert_eq!(l1_entries((512 << 20) + 1, 65536), 2);
        assert_eq!(l1_entries(0, 65536), 0);
    }
}
