//! The zeroing fallback chain. Methods are tried in order; one that answers "not supported"
//! (EOPNOTSUPP, ENOTTY, ENOSYS, EINVAL from an ioctl the device lacks) is switched off for the
//! rest of the run, so the cost of finding out is paid once. Writing zeros always works.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys;

/// A way to make a range read as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroMethod {
    /// fallocate(PUNCH_HOLE|KEEP_SIZE): deallocates (files).
    PunchHole,
    /// fallocate(ZERO_RANGE): zeroes, keeps the allocation (files).
    ZeroRange,
    /// ioctl(BLKZEROOUT) (block devices).
    BlkZeroout,
    /// Write zero bytes.
    WriteZeros,
}

/// An ordered chain of zeroing methods that remembers what failed.
pub struct ZeroChain {
    methods: Vec<(ZeroMethod, AtomicBool)>,
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

impl ZeroChain {
    /// A chain trying `methods` in order, then writing zeros.
    pub fn new(methods: &[ZeroMethod]) -> Self {
        let mut m: Vec<_> = methods
            .iter()
            .map(|&x| (x, AtomicBool::new(true)))
            .collect();
        if !methods.contains(&ZeroMethod::WriteZeros) {
            m.push((ZeroMethod::WriteZeros, AtomicBool::new(true)));
        }
        ZeroChain { methods: m }
    }

    /// Methods still enabled, in order.
    pub fn enabled(&self) -> Vec<ZeroMethod> {
        self.methods
            .iter()
            .filter(|(_, on)| on.load(Ordering::Relaxed))
            .map(|(m, _)| *m)
            .collect()
    }

    /// Zeroes `[offset, offset+len)` of `file`; `write_zeros` writes literal zeros.
    pub fn zero(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        write_zeros: impl Fn(u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        for (method, on) in &self.methods {
            if !on.load(Ordering::Relaxed) {
                continue;
            }
            let r = match method {
                ZeroMethod::PunchHole => sys::fallocate(
                    file,
                    sys::falloc::PUNCH_HOLE | sys::falloc::KEEP_SIZE,
                    offset,
                    len,
                ),
                ZeroMethod::ZeroRange => sys::fallocate(
                    file,
                    sys::falloc::ZERO_RANGE | sys::falloc::KEEP_SIZE,
                    offset,
                    len,
                ),
                ZeroMethod::BlkZeroout => sys::block_zeroout(file, offset, len),
                ZeroMethod::WriteZeros => return write_zeros(offset, len),
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => {
                    tracing::debug!(?method, error = %e, "zeroing method unsupported, falling back");
                    on.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        write_zeros(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn unsupported_method_is_switched_off_and_remembered() {
        // BLKZEROOUT on a regular file fails with ENOTTY: the chain must fall back to writing
        // zeros and never try the ioctl again.
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&[9u8; 8192], 0).unwrap();
        let chain = ZeroChain::new(&[ZeroMethod::BlkZeroout]);
        let writes = AtomicU64::new(0);
        let wz = |o: u64, l: u64| {
            writes.fetch_add(1, Ordering::Relaxed);
            f.write_all_at(&vec![0u8; l as usize], o)
        };
        chain.zero(&f, 0, 4096, wz).unwrap();
        assert_eq!(chain.enabled(), vec![ZeroMethod::WriteZeros]);
        chain.zero(&f, 4096, 4096, wz).unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), 2);
        let mut b = [1u8; 8192];
        f.read_exact_at(&mut b, 0).unwrap();
        assert!(b.iter().all(|&x| x == 0));
    }
}
