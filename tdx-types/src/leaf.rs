//! SEAMCALL leaf identifiers and the leaf/version encoding of RAX.
//!
//! RAX on input: bits 15:0 are the leaf number, bits 23:16 its version, bits
//! 63:24 zero (the module rejects anything else with
//! `TDX_OPERAND_INVALID|RAX`). A [`Leaf`] is the number; a [`LeafVersion`]
//! is what goes into RAX (Linux's `SEAMCALL_LEAF_VER(leaf, ver)`).
//!
//! Names are spelled as Intel's ABI and Linux's messages spell them:
//! `"TDH.MEM.PAGE.AUG"`. [`Leaf::from_name`] also accepts the C spelling
//! `"TDH_MEM_PAGE_AUG"`.
//!
//! P-SEAMLDR calls use the same instruction with bit 63 of RAX set; they are
//! [`SeamldrLeaf`]s, a separate type, because they go to another piece of
//! firmware with its own rules.

use core::fmt;

/// A SEAMCALL leaf number (RAX bits 15:0).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Leaf(pub u16);

macro_rules! leaves {
    ($( $(#[$meta:meta])* $ident:ident = $num:literal => $name:literal, )*) => {
        impl Leaf {
            $( $(#[$meta])* #[doc = concat!("`", $name, "` (", stringify!($num), ").")]
               pub const $ident: Self = Self($num); )*

            /// The ABI name (`"TDH.MEM.PAGE.AUG"`), or `None` for a number
            /// this crate does not know.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $num => Some($name), )*
                    _ => None,
                }
            }
        }

        /// Every named host leaf, in number order.
        pub const ALL_LEAVES: &[Leaf] = &[$( Leaf::$ident, )*];
    };
}

leaves! {
    /// Enter a vCPU; all GPRs in and out.
    VP_ENTER = 0 => "TDH.VP.ENTER",
    MNG_ADDCX = 1 => "TDH.MNG.ADDCX",
    MEM_PAGE_ADD = 2 => "TDH.MEM.PAGE.ADD",
    /// Versions 0 and 1 (v1 adds L2 S-EPT pages in R9-R11 and may be interrupted).
    MEM_SEPT_ADD = 3 => "TDH.MEM.SEPT.ADD",
    VP_ADDCX = 4 => "TDH.VP.ADDCX",
    MEM_PAGE_RELOCATE = 5 => "TDH.MEM.PAGE.RELOCATE",
    MEM_PAGE_AUG = 6 => "TDH.MEM.PAGE.AUG",
    MEM_RANGE_BLOCK = 7 => "TDH.MEM.RANGE.BLOCK",
    MNG_KEY_CONFIG = 8 => "TDH.MNG.KEY.CONFIG",
    MNG_CREATE = 9 => "TDH.MNG.CREATE",
    VP_CREATE = 10 => "TDH.VP.CREATE",
    MNG_RD = 11 => "TDH.MNG.RD",
    /// Debug TDs only.
    MEM_RD = 12 => "TDH.MEM.RD",
    MNG_WR = 13 => "TDH.MNG.WR",
    /// Debug TDs only.
    MEM_WR = 14 => "TDH.MEM.WR",
    MEM_PAGE_DEMOTE = 15 => "TDH.MEM.PAGE.DEMOTE",
    MR_EXTEND = 16 => "TDH.MR.EXTEND",
    MR_FINALIZE = 17 => "TDH.MR.FINALIZE",
    VP_FLUSH = 18 => "TDH.VP.FLUSH",
    MNG_VPFLUSHDONE = 19 => "TDH.MNG.VPFLUSHDONE",
    MNG_KEY_FREEID = 20 => "TDH.MNG.KEY.FREEID",
    MNG_INIT = 21 => "TDH.MNG.INIT",
    /// Linux calls it with version 1 (x2APIC ID in R8).
    VP_INIT = 22 => "TDH.VP.INIT",
    MEM_PAGE_PROMOTE = 23 => "TDH.MEM.PAGE.PROMOTE",
    PHYMEM_PAGE_RDMD = 24 => "TDH.PHYMEM.PAGE.RDMD",
    MEM_SEPT_RD = 25 => "TDH.MEM.SEPT.RD",
    VP_RD = 26 => "TDH.VP.RD",
    /// A no-op returning success in module 1.5.
    MNG_KEY_RECLAIMID = 27 => "TDH.MNG.KEY.RECLAIMID",
    PHYMEM_PAGE_RECLAIM = 28 => "TDH.PHYMEM.PAGE.RECLAIM",
    MEM_PAGE_REMOVE = 29 => "TDH.MEM.PAGE.REMOVE",
    MEM_SEPT_REMOVE = 30 => "TDH.MEM.SEPT.REMOVE",
    SYS_KEY_CONFIG = 31 => "TDH.SYS.KEY.CONFIG",
    /// Legacy (pre-merge Linux series): fills TDSYSINFO_STRUCT and the CMR array.
    SYS_INFO = 32 => "TDH.SYS.INFO",
    SYS_INIT = 33 => "TDH.SYS.INIT",
    SYS_RD = 34 => "TDH.SYS.RD",
    SYS_LP_INIT = 35 => "TDH.SYS.LP.INIT",
    SYS_TDMR_INIT = 36 => "TDH.SYS.TDMR.INIT",
    SYS_RDALL = 37 => "TDH.SYS.RDALL",
    MEM_TRACK = 38 => "TDH.MEM.TRACK",
    MEM_RANGE_UNBLOCK = 39 => "TDH.MEM.RANGE.UNBLOCK",
    PHYMEM_CACHE_WB = 40 => "TDH.PHYMEM.CACHE.WB",
    PHYMEM_PAGE_WBINVD = 41 => "TDH.PHYMEM.PAGE.WBINVD",
    /// Module 1.5 source name; a third-party list calls 42 `TDH.SYS.RDM`.
    MEM_SEPT_WR = 42 => "TDH.MEM.SEPT.WR",
    VP_WR = 43 => "TDH.VP.WR",
    /// A no-op returning success in module 1.5.
    SYS_LP_SHUTDOWN = 44 => "TDH.SYS.LP.SHUTDOWN",
    /// Version 0, or version 1 with a feature-enable bitmap in R9.
    SYS_CONFIG = 45 => "TDH.SYS.CONFIG",
    /// From a third-party list only; not in the module 1.5.01 source.
    MNG_RDM = 46 => "TDH.MNG.RDM",
    /// From a third-party list only; not in the module 1.5.01 source.
    MNG_WRM = 47 => "TDH.MNG.WRM",
    SERVTD_BIND = 48 => "TDH.SERVTD.BIND",
    SERVTD_PREBIND = 49 => "TDH.SERVTD.PREBIND",
    /// From a third-party list only; not in the module 1.5.01 source.
    VP_RDM = 50 => "TDH.VP.RDM",
    /// From a third-party list only; not in the module 1.5.01 source.
    VP_WRM = 51 => "TDH.VP.WRM",
    SYS_SHUTDOWN = 52 => "TDH.SYS.SHUTDOWN",
    /// Version 0, or version 1 with a feature-enable bitmap in R9.
    SYS_UPDATE = 53 => "TDH.SYS.UPDATE",
    /// From a third-party list only; not in the module 1.5.01 source.
    SYS_S4_END = 54 => "TDH.SYS.S4.END",
    /// Dynamic PAMT (Intel TDX module 1.5.16+, `tdx_api_defs.h`).
    PHYMEM_PAMT_ADD = 58 => "TDH.PHYMEM.PAMT.ADD",
    /// Dynamic PAMT (Intel TDX module 1.5.16+, `tdx_api_defs.h`).
    PHYMEM_PAMT_REMOVE = 59 => "TDH.PHYMEM.PAMT.REMOVE",
    /// Module Extensions (2026 series).
    EXT_INIT = 60 => "TDH.EXT.INIT",
    /// Module Extensions (2026 series).
    EXT_MEM_ADD = 61 => "TDH.EXT.MEM.ADD",
    EXPORT_ABORT = 64 => "TDH.EXPORT.ABORT",
    EXPORT_BLOCKW = 65 => "TDH.EXPORT.BLOCKW",
    EXPORT_RESTORE = 66 => "TDH.EXPORT.RESTORE",
    EXPORT_MEM = 68 => "TDH.EXPORT.MEM",
    /// Destructive: no SEAMCALL works after it until a full re-initialization.
    SYS_DISABLE = 69 => "TDH.SYS.DISABLE",
    EXPORT_PAUSE = 70 => "TDH.EXPORT.PAUSE",
    EXPORT_TRACK = 71 => "TDH.EXPORT.TRACK",
    EXPORT_STATE_IMMUTABLE = 72 => "TDH.EXPORT.STATE.IMMUTABLE",
    EXPORT_STATE_TD = 73 => "TDH.EXPORT.STATE.TD",
    EXPORT_STATE_VP = 74 => "TDH.EXPORT.STATE.VP",
    EXPORT_UNBLOCKW = 75 => "TDH.EXPORT.UNBLOCKW",
    IMPORT_ABORT = 80 => "TDH.IMPORT.ABORT",
    IMPORT_END = 81 => "TDH.IMPORT.END",
    IMPORT_COMMIT = 82 => "TDH.IMPORT.COMMIT",
    IMPORT_MEM = 83 => "TDH.IMPORT.MEM",
    IMPORT_TRACK = 84 => "TDH.IMPORT.TRACK",
    IMPORT_STATE_IMMUTABLE = 85 => "TDH.IMPORT.STATE.IMMUTABLE",
    IMPORT_STATE_TD = 86 => "TDH.IMPORT.STATE.TD",
    IMPORT_STATE_VP = 87 => "TDH.IMPORT.STATE.VP",
    MIG_STREAM_CREATE = 96 => "TDH.MIG.STREAM.CREATE",
    /// DICE quoting extension (2026 series).
    QUOTE_GET = 98 => "TDH.QUOTE.GET",
    /// DICE quoting extension (2026 series).
    QUOTE_INIT = 100 => "TDH.QUOTE.INIT",
    /// TDX Connect (2026 series).
    IOMMU_SETUP = 128 => "TDH.IOMMU.SETUP",
    /// TDX Connect (2026 series).
    IOMMU_CLEAR = 129 => "TDH.IOMMU.CLEAR",
    /// TDX Connect; register ABI not confirmed.
    SPDM_CREATE = 130 => "TDH.SPDM.CREATE",
    /// TDX Connect; register ABI not confirmed.
    SPDM_DELETE = 131 => "TDH.SPDM.DELETE",
    /// TDX Connect; register ABI not confirmed.
    IDE_STREAM_CREATE = 132 => "TDH.IDE.STREAM.CREATE",
    /// TDX Connect; register ABI not confirmed.
    IDE_STREAM_BLOCK = 133 => "TDH.IDE.STREAM.BLOCK",
    /// TDX Connect; register ABI not confirmed.
    IDE_STREAM_DELETE = 134 => "TDH.IDE.STREAM.DELETE",
    /// TDX Connect; register ABI not confirmed.
    IDE_STREAM_KM = 135 => "TDH.IDE.STREAM.KM",
    /// TDX Connect; register ABI not confirmed.
    SPDM_CONNECT = 142 => "TDH.SPDM.CONNECT",
    /// TDX Connect; register ABI not confirmed.
    SPDM_DISCONNECT = 143 => "TDH.SPDM.DISCONNECT",
    /// TDX Connect.
    SPDM_MNG = 144 => "TDH.SPDM.MNG",
}

impl Leaf {
    /// The leaf called with version `version`.
    #[inline]
    pub const fn v(self, version: u8) -> LeafVersion {
        LeafVersion {
            leaf: self,
            version,
        }
    }

    /// The leaf called with version 0.
    #[inline]
    pub const fn v0(self) -> LeafVersion {
        self.v(0)
    }

    /// The leaf named `name`: `"TDH.MEM.PAGE.AUG"` or `"TDH_MEM_PAGE_AUG"`.
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.as_bytes();
        ALL_LEAVES.iter().copied().find(|l| {
            let known = l.name().unwrap_or_default().as_bytes();
            known.len() == name.len()
                && known
                    .iter()
                    .zip(name)
                    .all(|(&k, &n)| k == n || (k == b'.' && n == b'_'))
        })
    }
}

impl fmt::Display for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "SEAMCALL leaf {}", self.0),
        }
    }
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Leaf({} = {self})", self.0)
    }
}

/// A leaf with its version: the value that goes into RAX
/// (`leaf | version << 16`, Linux's `SEAMCALL_LEAF_VER`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LeafVersion {
    leaf: Leaf,
    version: u8,
}

/// Bit position of the version in RAX.
pub const LEAF_VERSION_SHIFT: u32 = 16;

/// Why a RAX value is not a leaf/version pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("RAX {0:#x} has bits set above the version field (63:24 must be zero)")]
pub struct ReservedRaxBits(pub u64);

impl LeafVersion {
    /// The pair for `leaf` at `version`.
    pub const fn new(leaf: Leaf, version: u8) -> Self {
        Self { leaf, version }
    }

    /// The leaf.
    #[inline]
    pub const fn leaf(self) -> Leaf {
        self.leaf
    }

    /// The version.
    #[inline]
    pub const fn version(self) -> u8 {
        self.version
    }

    /// The RAX value.
    #[inline]
    pub const fn rax(self) -> u64 {
        self.leaf.0 as u64 | (self.version as u64) << LEAF_VERSION_SHIFT
    }

    /// Decodes a RAX value, refusing reserved bits 63:24 as the module does.
    pub const fn from_rax(rax: u64) -> Result<Self, ReservedRaxBits> {
        if rax >> 24 != 0 {
            return Err(ReservedRaxBits(rax));
        }
        Ok(Self {
            leaf: Leaf(rax as u16),
            version: (rax >> LEAF_VERSION_SHIFT) as u8,
        })
    }
}

impl From<Leaf> for LeafVersion {
    fn from(leaf: Leaf) -> Self {
        leaf.v0()
    }
}

impl fmt::Display for LeafVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.version == 0 {
            write!(f, "{}", self.leaf)
        } else {
            write!(f, "{} v{}", self.leaf, self.version)
        }
    }
}

impl fmt::Debug for LeafVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeafVersion({self}, rax={:#x})", self.rax())
    }
}

/// A P-SEAMLDR call: RAX bit 63 set, the call number in the low bits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct SeamldrLeaf(u64);

impl SeamldrLeaf {
    /// `SEAMLDR.INFO`: RCX = PA of the seamldr_info buffer.
    pub const INFO: Self = Self(1 << 63);
    /// `SEAMLDR.INSTALL`: RCX = PA of the 4096-byte seamldr_params.
    pub const INSTALL: Self = Self(1 << 63 | 1);
    /// `SEAMLDR.SHUTDOWN` (module source list).
    pub const SHUTDOWN: Self = Self(1 << 63 | 2);
    /// `SEAMLDR.SEAMINFO` (module source list).
    pub const SEAMINFO: Self = Self(1 << 63 | 3);
    /// `SEAMLDR.CLEANUP` (module source list).
    pub const CLEANUP: Self = Self(1 << 63 | 4);

    /// The RAX value.
    #[inline]
    pub const fn rax(self) -> u64 {
        self.0
    }

    /// The name, if known.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 & !(1 << 63) {
            0 => Some("SEAMLDR.INFO"),
            1 => Some("SEAMLDR.INSTALL"),
            2 => Some("SEAMLDR.SHUTDOWN"),
            3 => Some("SEAMLDR.SEAMINFO"),
            4 => Some("SEAMLDR.CLEANUP"),
            _ => None,
        }
    }
}

impl fmt::Debug for SeamldrLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SeamldrLeaf({:#x} = {})",
            self.0,
            self.name().unwrap_or("?")
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{collections::HashSet, string::ToString};

    #[test]
    fn numbers_and_names_both_ways() {
        assert_eq!(Leaf::MEM_PAGE_AUG.0, 6);
        assert_eq!(Leaf::MEM_PAGE_AUG.name(), Some("TDH.MEM.PAGE.AUG"));
        assert_eq!(
            Leaf::from_name("TDH.MEM.PAGE.AUG"),
            Some(Leaf::MEM_PAGE_AUG)
        );
        assert_eq!(
            Leaf::from_name("TDH_MEM_PAGE_AUG"),
            Some(Leaf::MEM_PAGE_AUG)
        );
        assert_eq!(Leaf::from_name("TDH.MEM.PAGE"), None);
        assert_eq!(Leaf::from_name("tdh.mem.page.aug"), None);
        assert_eq!(Leaf(7777).name(), None);
        assert_eq!(Leaf(7777).to_string(), "SEAMCALL leaf 7777");
        for l in ALL_LEAVES {
            assert_eq!(Leaf::from_name(l.name().unwrap()), Some(*l));
        }
    }

    #[test]
    fn table_is_consistent() {
        let nums: HashSet<u16> = ALL_LEAVES.iter().map(|l| l.0).collect();
        let names: HashSet<&str> = ALL_LEAVES.iter().map(|l| l.name().unwrap()).collect();
        assert_eq!(nums.len(), ALL_LEAVES.len());
        assert_eq!(names.len(), ALL_LEAVES.len());
        assert!(names.iter().all(|n| n.starts_with("TDH.")));
        assert!(
            ALL_LEAVES.windows(2).all(|w| w[0].0 < w[1].0),
            "not in number order"
        );
        assert_eq!(ALL_LEAVES.len(), 92);
    }

    #[test]
    fn leaf_version_encoding() {
        // Linux: TDH.VP.INIT is called as 22 | 1 << 16.
        assert_eq!(Leaf::VP_INIT.v(1).rax(), 0x10016);
        assert_eq!(Leaf::SYS_CONFIG.v(1).rax(), 0x1002D);
        assert_eq!(Leaf::SYS_CONFIG.v0().rax(), 45);
        assert_eq!(LeafVersion::from_rax(0x10016), Ok(Leaf::VP_INIT.v(1)));
        assert_eq!(
            LeafVersion::from_rax(1 << 24),
            Err(ReservedRaxBits(1 << 24))
        );
        assert_eq!(Leaf::VP_INIT.v(1).to_string(), "TDH.VP.INIT v1");
        assert_eq!(Leaf::VP_INIT.v0().to_string(), "TDH.VP.INIT");
    }

    #[test]
    fn seamldr_calls_have_bit_63() {
        assert_eq!(SeamldrLeaf::INFO.rax(), 0x8000_0000_0000_0000);
        assert_eq!(SeamldrLeaf::INSTALL.rax(), 0x8000_0000_0000_0001);
        assert_eq!(SeamldrLeaf::INSTALL.name(), Some("SEAMLDR.INSTALL"));
        // A P-SEAMLDR RAX is never a valid TDX-module leaf/version pair.
        assert!(LeafVersion::from_rax(SeamldrLeaf::INFO.rax()).is_err());
    }
}
