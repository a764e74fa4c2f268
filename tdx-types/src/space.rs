//! Who owns a page, and the one handle this crate gives for it.
//!
//! On a TDX host a physical page is in one of three hands:
//!
//! - the host: the host kernel or VMM may read and write it through its
//!   direct map. Host pages are plain numbers ([`Pfn`], [`PfnRun`](crate::PfnRun)):
//!   the allocator that handed them out keeps the record;
//! - the firmware: the TDX module owns it (TDR, TDCS, TDVPR, TDCX, S-EPT
//!   pages, PAMTs, the extension memory pool). A host write to it corrupts
//!   the module's state; a host read returns ciphertext or, on some
//!   platforms, poisons the line. A [`FirmwarePage`] names such a page;
//! - a guest: a Trust Domain's private memory, mapped through the S-EPT.
//!   The host must not touch it either. `tdx-api` names it with its own
//!   `GuestFrame`, whose constructor is where the caller makes that promise.
//!
//! A [`FirmwarePage`] is **unique** (neither `Clone` nor `Copy`: ownership
//! moves with the value), and **inert**: it has no `Deref`, holds no pointer,
//! and exposes only the page's address. Nothing in this crate reads or
//! writes memory.
//!
//! It is a *claim* that the module owns the page, not a capability: it grants
//! no access to memory, so making one needs no `unsafe`. The crates that do
//! grant access (the `Platform` direct-map interface in `tdx-api`) establish
//! ownership with their own contracts, and make a `FirmwarePage` only right
//! after the successful SEAMCALL that handed the page to the module; the
//! page leaves the module with `TDH.PHYMEM.PAGE.RECLAIM` plus the cache
//! maintenance the ABI requires.

use core::fmt;

use crate::{
    addr::{Hpa, Pfn},
    page::{PfnRange, Size4K},
};

/// A unique, inert handle to a 4 KiB page the TDX module owns: TDR, TDCS,
/// TDVPR, TDCX, S-EPT, PAMT or extension-pool page. Its address is
/// readable; its contents are not.
///
/// See the [module documentation](self) for what the handle is and is not.
/// Dropping one does nothing to the page: the page stays with the module
/// (leaked on purpose), which is why dropping one unused is flagged by
/// `#[must_use]`.
#[must_use = "a firmware page is the only record that the module owns the page; dropping it leaks the page"]
#[derive(PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FirmwarePage {
    pfn: Pfn,
}

impl FirmwarePage {
    /// A handle claiming that the module owns the 4 KiB page at `pfn`.
    ///
    /// This records a claim; it moves nothing and grants no access. Code
    /// that hands out firmware pages (tdx-api) calls it right after the step
    /// that made the claim true.
    pub const fn from_pfn(pfn: Pfn) -> Self {
        Self { pfn }
    }

    /// The page's frame.
    #[inline]
    pub const fn pfn(&self) -> Pfn {
        self.pfn
    }

    /// The page's physical address.
    #[inline]
    pub const fn hpa(&self) -> Hpa {
        self.pfn.hpa()
    }

    /// Gives up the handle and keeps the numbers. This is how a page is
    /// deliberately leaked: the frame stays with the module and the caller
    /// is left with an address to report, nothing more.
    pub const fn into_range(self) -> PfnRange<Size4K> {
        // Every frame is 4 KiB aligned, so the conversion cannot fail.
        PfnRange::<Size4K>::containing(self.pfn)
    }
}

impl fmt::Debug for FirmwarePage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FirmwarePage({:#x})", self.pfn.hpa().as_u64())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn firmware_pages_expose_their_address_only() {
        let p = FirmwarePage::from_pfn(Pfn::new(0x1234));
        assert_eq!(p.pfn(), Pfn::new(0x1234));
        assert_eq!(p.hpa(), Hpa::new(0x123_4000));
        assert_eq!(format!("{p:?}"), "FirmwarePage(0x1234000)");
        let r = p.into_range();
        assert_eq!(r.first(), Pfn::new(0x1234));
        assert_eq!(r.frames(), 1);
    }
}
