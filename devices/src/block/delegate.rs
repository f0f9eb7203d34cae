//! `delegate_disk!`, for test doubles that wrap a disk and change a few of its methods.

/// Inside an `impl DiskBackend for W` block, `delegate_disk!(FIELD: method, ...)` defines
/// each named method as the same call on `self.FIELD`, so a wrapper spells out only the
/// methods it changes.
macro_rules! delegate_disk {
    ($field:tt: $($method:ident),+ $(,)?) => {
        $( $crate::block::delegate::delegate_disk!(@one $field $method); )+
    };
    (@one $f:tt format) => {
        fn format(&self) -> $crate::block::ImageFormat {
            self.$f.format()
        }
    };
    (@one $f:tt size) => {
        fn size(&self) -> u64 {
            self.$f.size()
        }
    };
    (@one $f:tt is_read_only) => {
        fn is_read_only(&self) -> bool {
            self.$f.is_read_only()
        }
    };
    (@one $f:tt read_at) => {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), $crate::block::DiskError> {
            self.$f.read_at(buf, offset)
        }
    };
    (@one $f:tt write_at) => {
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), $crate::block::DiskError> {
            self.$f.write_at(buf, offset)
        }
    };
    (@one $f:tt read_vectored) => {
        fn read_vectored(
            &self,
            bufs: &[vm_memory::VolatileSlice<'_>],
            offset: u64,
        ) -> Result<(), $crate::block::DiskError> {
            self.$f.read_vectored(bufs, offset)
        }
    };
    (@one $f:tt write_vectored) => {
        fn write_vectored(
            &self,
            bufs: &[vm_memory::VolatileSlice<'_>],
            offset: u64,
        ) -> Result<(), $crate::block::DiskError> {
            self.$f.write_vectored(bufs, offset)
        }
    };
    (@one $f:tt flush) => {
        fn flush(&self) -> Result<(), $crate::block::DiskError> {
            self.$f.flush()
        }
    };
    (@one $f:tt discard) => {
        fn discard(&self, offset: u64, len: u64) -> Result<(), $crate::block::DiskError> {
            self.$f.discard(offset, len)
        }
    };
    (@one $f:tt write_zeroes) => {
        fn write_zeroes(
            &self,
            offset: u64,
            len: u64,
            unmap: bool,
        ) -> Result<(), $crate::block::DiskError> {
            self.$f.write_zeroes(offset, len, unmap)
        }
    };
}

pub(crate) use delegate_disk;
