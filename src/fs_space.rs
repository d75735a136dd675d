//! The space of the file system holding a path (one `statvfs`), shared by the disk health
//! check and the disk resource metrics.

/// Sizes of a file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FsSpace {
    /// The file system's size.
    pub(crate) total: u64,
    /// Free blocks, including those reserved for the superuser.
    pub(crate) free: u64,
    /// Free blocks available to unprivileged users.
    pub(crate) available: u64,
}

impl FsSpace {
    /// Reads the file system holding `path`.
    pub(crate) fn of(path: &std::path::Path) -> std::io::Result<Self> {
        let s = rustix::fs::statvfs(path)?;
        Ok(Self {
            total: s.f_blocks.saturating_mul(s.f_frsize),
            free: s.f_bfree.saturating_mul(s.f_frsize),
            available: s.f_bavail.saturating_mul(s.f_frsize),
        })
    }

    /// Bytes in use.
    #[cfg_attr(not(feature = "resources"), allow(dead_code))]
    pub(crate) fn used(&self) -> u64 {
        self.total.saturating_sub(self.free)
    }
}
