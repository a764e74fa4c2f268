//! The offline MRTD calculator: the measurement a TD built from given
//! initial pages will have, computed without a TDX module.
//!
//! MRTD is SHA-384 over 128-byte blocks, in call order
//! (`tdh_mem_page_add.c`, `tdh_mr_extend.c` and `tdh_mr_finalize.c` in
//! `src/vmm_dispatcher/api_calls/` of Intel's module source):
//!
//! - TDH.MEM.PAGE.ADD adds one block: `"MEM.PAGE.ADD"` padded to 16 bytes
//!   with NULs, the page's GPA (8 bytes, little endian), 104 zero bytes. The
//!   page's contents are not measured by PAGE.ADD.
//! - TDH.MR.EXTEND adds a block `"MR.EXTEND"` with the GPA of one 256-byte
//!   chunk, then the 256 bytes of the chunk (two more blocks). Measuring a
//!   whole 4 KiB page takes 16 extends.
//!
//! A VMM that adds its initial pages with [`InitialPage`]s in the same
//! order gets the MRTD its attestation verifier should expect.

use sha2::{Digest, Sha384};
use tdx_types::abi::{MR_EXTEND_CHUNK, MeasurementBlock};

/// One initial page of a TD, as the VMM adds it.
#[derive(Debug, Clone, Copy)]
pub struct InitialPage<'a> {
    /// Guest physical address (4 KiB aligned).
    pub gpa: u64,
    /// The 4 KiB the page is filled with.
    pub contents: &'a [u8; 4096],
    /// Whether the contents are measured (16 × TDH.MR.EXTEND after the
    /// TDH.MEM.PAGE.ADD).
    pub extend: bool,
}

/// A streaming MRTD computation, one leaf at a time.
#[derive(Clone, Default)]
pub struct MrtdBuilder {
    hash: Sha384,
}

impl core::fmt::Debug for MrtdBuilder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MrtdBuilder").finish_non_exhaustive()
    }
}

impl MrtdBuilder {
    /// The measurement TDH.MNG.INIT starts.
    pub fn new() -> Self {
        Self::default()
    }

    /// What TDH.MEM.PAGE.ADD at `gpa` adds.
    pub fn page_add(&mut self, gpa: u64) -> &mut Self {
        self.hash.update(MeasurementBlock::page_add(gpa).as_bytes());
        self
    }

    /// What TDH.MR.EXTEND of the 256-byte chunk at `gpa` adds.
    pub fn mr_extend(&mut self, gpa: u64, chunk: &[u8; MR_EXTEND_CHUNK]) -> &mut Self {
        self.hash
            .update(MeasurementBlock::mr_extend(gpa).as_bytes());
        self.hash.update(chunk);
        self
    }

    /// A whole initial page: PAGE.ADD, then 16 extends if measured.
    pub fn add_page(&mut self, page: &InitialPage<'_>) -> &mut Self {
        self.page_add(page.gpa);
        if page.extend {
            for (i, chunk) in page.contents.chunks_exact(MR_EXTEND_CHUNK).enumerate() {
                let chunk: &[u8; MR_EXTEND_CHUNK] = chunk.try_into().expect("exact chunks");
                self.mr_extend(page.gpa + (i * MR_EXTEND_CHUNK) as u64, chunk);
            }
        }
        self
    }

    /// What TDH.MR.FINALIZE stores as MRTD.
    pub fn finalize(self) -> [u8; 48] {
        self.hash.finalize().into()
    }
}

/// The MRTD of a TD whose initial pages are `pages`, added in order.
pub fn mrtd<'a>(pages: impl IntoIterator<Item = InitialPage<'a>>) -> [u8; 48] {
    let mut b = MrtdBuilder::new();
    for p in pages {
        b.add_page(&p);
    }
    b.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-384 of the empty string: a TD without initial pages.
    #[test]
    fn empty_td() {
        let m = mrtd([]);
        assert_eq!(
            m[..8],
            [0x38, 0xb0, 0x60, 0xa7, 0x51, 0xac, 0x96, 0x38],
            "SHA-384(\"\") starts 38b060a751ac9638"
        );
    }

    #[test]
    fn extend_order_matters() {
        let a = [1u8; 4096];
        let b = [2u8; 4096];
        let p = |gpa, contents, extend| InitialPage {
            gpa,
            contents,
            extend,
        };
        let x = mrtd([p(0, &a, true), p(0x1000, &b, false)]);
        let y = mrtd([p(0x1000, &b, false), p(0, &a, true)]);
        let z = mrtd([p(0, &b, true), p(0x1000, &b, false)]);
        assert_ne!(x, y);
        assert_ne!(x, z);
        // Unmeasured contents do not change MRTD.
        assert_eq!(mrtd([p(0, &a, false)]), mrtd([p(0, &b, false)]));
    }
}
