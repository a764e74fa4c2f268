//! Module profiles: the global metadata a TDX module reports, and the
//! per-version behaviour the simulator follows.
//!
//! [`Profile::tdx_1_5`] is the default: TDX module 1.5.01 as Intel's source
//! has it (`intel/tdx-module`, tag `TDX_1.5.01`).
//! [`Profile::tdx_1_5_05`] is module 1.5.05, the later 1.5 release whose
//! source is public too (the `TDX 1.5.05` commit of the tdx-module
//! history): TDX_FEATURES0.TOPOLOGY_ENUM, TDH.VP.INIT version 1 (the
//! x2APIC ID in R8, as Linux issues it), MAX_VCPUS_PER_TD, its metadata
//! and CPUID lookup tables, and its TD_PARAMS CPUID rules (18 configurable
//! leaves with CPUID(0x1F)'s topology check); its doc lists what of 1.5.05
//! is not modelled.
//! [`Profile::tdx_1_5_16`] is module 1.5.05 plus Dynamic PAMT, the feature
//! Intel's module has from 1.5.16 on (TDX_FEATURES0 bit 36, TDH.SYS.CONFIG
//! R8 bit 16, TDH.PHYMEM.PAMT.ADD/REMOVE); nothing else of 1.5.16 is
//! modelled.
//! [`Profile::tdx_1_5_ext`] is a newer module with the Extensions feature: a
//! memory pool the host must donate to (TDH.EXT.MEM.ADD) and EXT_REQUIRED
//! (TDH.EXT.INIT).
//!
//! The version numbers, TDX_FEATURES0, the versioned leaves, the list of
//! global fields and the TD_PARAMS rules (attribute, XFAM and CONFIG_FLAGS
//! fixed bits, the CPUID configuration table, the IA32_ARCH_CAPABILITIES
//! configuration mask, the CPU models) are the modules', each with the
//! source file it comes from. The Extensions profile is a model of a newer
//! module whose source was not read, and says so.

use tdx_types::{
    Leaf,
    abi::{CPUID_CONFIG_1_5_01, CPUID_CONFIG_1_5_05, CpuidConfigRule},
    metadata::{TdxFeatures0, field},
};

/// One CPUID leaf the module lets the host configure (one entry of
/// TD_PARAMS' CPUID area, `cpuid_configurable_t`), with the bits the host
/// may set. TDH.MNG.INIT refuses a 1 outside both masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidConfig {
    /// CPUID leaf.
    pub leaf: u32,
    /// Sub-leaf, or `None` when the leaf has none.
    pub subleaf: Option<u32>,
    /// CONFIG_DIRECT bits of EAX, EBX, ECX, EDX: the TD sees the configured
    /// value.
    pub config_direct: [u32; 4],
    /// ALLOW_DIRECT bits of EAX, EBX, ECX, EDX: configured 1, the TD sees
    /// the CPU's value; configured 0, it sees 0.
    pub allow_direct: [u32; 4],
    /// The leaf's index in the module's CPUID lookup table
    /// (`cpuid_configurable_t.lookup_index`). TDH.MNG.INIT walks that
    /// table, so it checks the entries in this order, not TD_PARAMS order.
    pub lookup_index: u8,
}

impl CpuidConfig {
    /// Every bit the host may set, per register (CONFIG_DIRECT |
    /// ALLOW_DIRECT).
    pub fn mask(&self) -> [u32; 4] {
        core::array::from_fn(|i| self.config_direct[i] | self.allow_direct[i])
    }

    /// The leaf and subleaf as the module encodes them in RCX of a
    /// TDH.MNG.INIT CPUID error and in CPUID_CONFIG_LEAVES: leaf in bits
    /// 31:0, subleaf in 63:32 (all ones for none).
    pub fn leaf_subleaf(&self) -> u64 {
        u64::from(self.leaf) | u64::from(self.subleaf.unwrap_or(u32::MAX)) << 32
    }
}

/// Global metadata and per-version behaviour of one TDX module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Short name used in traces (`"tdx-1.5"`).
    pub name: &'static str,
    /// Major, minor and update version (MAJOR_VERSION, MINOR_VERSION,
    /// UPDATE_VERSION through TDH.SYS.RD).
    pub version: (u16, u16, u16),
    /// TDX_FEATURES0.
    pub features0: TdxFeatures0,
    /// MAX_TDMRS (1.5: 64).
    pub max_tdmrs: u16,
    /// MAX_RESERVED_PER_TDMR (1.5: 16).
    pub max_reserved_per_tdmr: u16,
    /// PAMT entry size in bytes for the 4K, 2M and 1G levels (1.5: 16 each).
    pub pamt_entry_size: [u16; 3],
    /// TDR_BASE_SIZE (1.5: 4096).
    pub tdr_base_size: u16,
    /// TDCS_BASE_SIZE (1.5: 6 pages).
    pub tdcs_base_size: u16,
    /// TDVPS_BASE_SIZE (1.5: 6 pages).
    pub tdvps_base_size: u16,
    /// ATTRIBUTES_FIXED0 (bits that may be 1), the module's
    /// `TDX_ATTRIBUTES_FIXED0`; the one it reports and checks leaves out
    /// LASS on a CPU without it
    /// ([`MachineDesc::attributes_fixed0`](crate::MachineDesc::attributes_fixed0)).
    pub attributes_fixed0: u64,
    /// ATTRIBUTES_FIXED1 (bits that must be 1).
    pub attributes_fixed1: u64,
    /// The XFAM bits the module can allow (`TDX_XFAM_FIXED0`); the
    /// XFAM_FIXED0 it reports and checks is this ANDed with what the CPU
    /// supports ([`MachineDesc::xfam_fixed0`](crate::MachineDesc::xfam_fixed0)).
    pub xfam_fixed0: u64,
    /// XFAM_FIXED1.
    pub xfam_fixed1: u64,
    /// CONFIG_FLAGS_FIXED0 (bits TD_PARAMS.config_flags may set).
    pub config_flags_fixed0: u64,
    /// CONFIG_FLAGS_FIXED1 (bits it must set).
    pub config_flags_fixed1: u64,
    /// The IA32_ARCH_CAPABILITIES bits TD_PARAMS may configure
    /// (IA32_ARCH_CAPABILITIES_CONFIG_MASK).
    pub arch_caps_config_mask: u64,
    /// The CPU models the module runs on, newest first, each as CPUID(1).EAX
    /// with the latest stepping a migratable TD may claim for that model
    /// (`allowed_fms`).
    pub allowed_fms: Vec<u32>,
    /// MAX_VCPUS_PER_TD, when the module serves that field (1.5.01 does
    /// not: TDH.SYS.RD answers `TDX_METADATA_FIELD_ID_INCORRECT`).
    pub max_vcpus_per_td: Option<u16>,
    /// Which module's TD and vCPU metadata tables TDH.MNG.RD/WR and
    /// TDH.VP.RD/WR serve.
    pub metadata: MetadataTables,
    /// The configurable CPUID leaves, in TD_PARAMS entry (and metadata)
    /// order; their number is NUM_CPUID_CONFIG, the entries TD_PARAMS
    /// carries.
    pub cpuid_config: Vec<CpuidConfig>,
    /// MODULE_HV: the handoff version TDH.SYS.SHUTDOWN accepts.
    pub module_hv: u16,
    /// MEMORY_POOL_REQUIRED_PAGES (Extensions): 0 when there is no pool.
    pub memory_pool_required_pages: u32,
    /// EXT_REQUIRED (Extensions): TDH.EXT.INIT must run.
    pub ext_required: bool,
    /// Bytes of TDMR whose PAMT entries one TDH.SYS.TDMR.INIT initializes
    /// (1.5.01: 1024 4K entries = 4 MiB).
    pub tdmr_init_chunk: u64,
    /// Leaves the dispatcher lets through with a version above 0 (any
    /// version, as `tdx_vmm_dispatcher.c` checks), and the highest version the leaf itself
    /// then accepts (higher: `TDX_OPERAND_INVALID|RAX` from the leaf).
    pub leaf_versions: Vec<(Leaf, u8)>,
    /// Features TDH.SYS.CONFIG v1 accepts in R9.
    pub configurable_features: TdxFeatures0,
    /// TDH.MEM.PAGE.AUG is allowed before TDH.MR.FINALIZE (1.5.01: yes).
    pub aug_before_finalize: bool,
    /// TDH.MNG.INIT sets RCX to leaf 7/0 when HLE and RTM come out
    /// different (1.5.05; 1.5.01 leaves RCX 0).
    pub hle_rtm_error_sets_rcx: bool,
    /// TDH.MNG.INIT checks the CPUID(0x1F) topology configuration after
    /// the CPUID walk (`check_cpuid_1f`, 1.5.05; 1.5.01 has no 0x1F
    /// entries).
    pub cpuid_1f_topology: bool,
}

/// The 12 configurable CPUID leaves of module 1.5.01 in TD_PARAMS entry
/// order, with their CONFIG_DIRECT and ALLOW_DIRECT bits
/// (`cpuid_configurable`, include/auto_gen/cpuid_configurations.c).
/// Their lookup indices are 0-9 for entries 0-9, 14 for entry 10 and 59
/// for entry 11.
fn cpuid_config_1_5_01() -> Vec<CpuidConfig> {
    cpuid_config(
        &CPUID_CONFIG_1_5_01,
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 59],
    )
}

/// The 18 configurable CPUID leaves of module 1.5.05
/// (`MAX_NUM_CPUID_CONFIG`, `include/auto_gen/cpuid_configurations_defines.h`;
/// `cpuid_configurable`, `include/auto_gen/cpuid_configurations.c`):
/// 1.5.01's 12, with leaf 7/1 allowing more, then entries 12-17,
/// CPUID(0x1F) sub-leaves 0-5 ([`CPUID_CONFIG_1_5_05`] has the masks).
/// They sit at lookup indices 46-51, between entry 10 (14) and entry 11
/// (59).
fn cpuid_config_1_5_05() -> Vec<CpuidConfig> {
    cpuid_config(
        &CPUID_CONFIG_1_5_05,
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 59, 46, 47, 48, 49, 50, 51],
    )
}

/// A module's configurable CPUID leaves: the rules `tdx-types` states for
/// host-side checks, with each leaf's index in the module's CPUID lookup
/// table (`lookup[i]` for entry `i`).
fn cpuid_config(rules: &[CpuidConfigRule], lookup: &[u8]) -> Vec<CpuidConfig> {
    assert_eq!(rules.len(), lookup.len(), "a lookup index per entry");
    rules
        .iter()
        .zip(lookup)
        .map(|(r, &lookup_index)| CpuidConfig {
            leaf: r.leaf.leaf,
            subleaf: r.leaf.subleaf,
            config_direct: r.config_direct.registers(),
            allow_direct: r.allow_direct.registers(),
            lookup_index,
        })
        .collect()
}

/// The number of CPUID_CONFIG_LEAVES and CPUID_CONFIG_VALUES entries
/// TDH.SYS.RD serves in modules 1.5.01 and 1.5.05 (`num_of_fields` of both
/// fields, `include/auto_gen/global_sys_fields_lookup.c`), more than either
/// module's NUM_CPUID_CONFIG.
pub(crate) const CPUID_CONFIG_ARRAY_LEN: u32 = 32;

/// The leaves module 1.5.01's dispatcher lets through with a version above
/// 0 (`src/vmm_dispatcher/tdx_vmm_dispatcher.c`), each with the highest
/// version the leaf itself then accepts: 1 for all five
/// (`src/vmm_dispatcher/api_calls/tdh_mem_page_promote.c`,
/// `tdh_mem_sept_add.c`, `tdh_mem_sept_remove.c`, `tdh_mng_rd_wr.c`,
/// `tdh_vp_rd_wr.c`). TDH.VP.INIT is not among them: version 1 of it is
/// refused by the dispatcher (`TDX_OPERAND_INVALID|RAX`, nothing written).
const LEAF_VERSIONS_1_5_01: [(Leaf, u8); 5] = [
    (Leaf::MEM_PAGE_PROMOTE, 1),
    (Leaf::MEM_SEPT_ADD, 1),
    (Leaf::MEM_SEPT_REMOVE, 1),
    (Leaf::MNG_RD, 1),
    (Leaf::VP_RD, 1),
];

/// TDX_FEATURES0 of module 1.5.01 (`src/common/metadata_handlers/metadata_sys.c`,
/// bit names `tdx_features_enum0_t` in `include/tdx_api_defs.h`):
/// TD_MIGRATION (0), TD_PRESERVING (1), SERVICE_TD (2), TDG_VP_RDWR (3),
/// RELAXED_MEM_MNG_CONCURRENCY (4), CPUID_VIRT_GUEST_CTRL (5),
/// TD_PARTITIONING (7), TD_ENTRY_ENHANCEMENTS (9), HOST_PRIORITY_LOCKS (10),
/// CONFIG_IA32_ARCH_CAP (11), PENDING_EPT_VIOLATION_V2 (16), FMS_CONFIG
/// (17), NO_RBP_MOD (18), L2_TLB_INVD_OPT (19). LOCAL_ATTESTATION (8)
/// depends on the platform (SEAMVERIFYREPORT); the model's platform has
/// none. No TOPOLOGY_ENUM (20).
const FEATURES0_1_5_01: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 7)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11)
    | (1 << 16)
    | (1 << 17)
    | (1 << 18)
    | (1 << 19);

/// Which module's TD- and vCPU-scope metadata tables a profile serves
/// (`include/auto_gen/tdr_tdcs_fields_lookup.c`, `tdvps_fields_lookup.c`,
/// `td_vmcs_fields_lookup.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataTables {
    /// Module 1.5.01: 83 TD entries.
    Tdx1_5_01,
    /// Module 1.5.05: the 1.5.01 tables plus TOPOLOGY_ENUM_CONFIGURED and
    /// X2APIC_IDS, with CONFIG_FLAGS and TD_CTLS non-architectural
    /// (85 TD entries).
    Tdx1_5_05,
}

impl Profile {
    /// TDX module 1.5.01 (the default), as its source has it (tag
    /// `TDX_1.5.01` of `intel/tdx-module`).
    ///
    /// From the source: the version 1.5.01 (the tag; `proj_defs.mk` has
    /// major 1, minor 5), TDX_FEATURES0 (bits 0-5, 7, 9-11, 16-19), the five
    /// version-1 leaves of the dispatcher (TDH.VP.INIT only in version 0),
    /// MAX_TDMRS 64, MAX_RESERVED_PER_TDMR 16, PAMT entries of 16 bytes,
    /// TDR 4 KiB, TDCS and TDVPS 6 pages, 4 MiB per TDH.SYS.TDMR.INIT, no
    /// MAX_VCPUS_PER_TD field (the architectural limit is 0xFFFF vCPUs),
    /// and the TD_PARAMS rules (ATTRIBUTES, XFAM and CONFIG_FLAGS fixed
    /// bits, the 12 configurable CPUID leaves, the IA32_ARCH_CAPABILITIES
    /// configuration mask, the CPU models).
    pub fn tdx_1_5() -> Self {
        Self {
            name: "tdx-1.5",
            version: (1, 5, 1),
            features0: TdxFeatures0::from_bits(FEATURES0_1_5_01),
            max_tdmrs: 64,
            max_reserved_per_tdmr: 16,
            pamt_entry_size: [16; 3],
            tdr_base_size: 4096,
            tdcs_base_size: 6 * 4096,
            tdvps_base_size: 6 * 4096,
            // DEBUG (0), SEPT_VE_DISABLE (28), MIGRATABLE (29), PKS (30),
            // PERFMON (63) (`TDX_ATTRIBUTES_FIXED0`/`FIXED1`,
            // src/common/data_structures/td_control_structures.h).
            attributes_fixed0: (1 << 0) | (1 << 28) | (1 << 29) | (1 << 30) | (1 << 63),
            attributes_fixed1: 0,
            // x87, SSE, AVX, AVX-512 (5-7), PT (8), PKRU (9), CET (11-12),
            // ULI (14), LBR (15), AMX (17-18) (`TDX_XFAM_FIXED0`/`FIXED1`,
            // same file); the CPU's support masks it further.
            xfam_fixed0: 0x0006_DBE7,
            xfam_fixed1: 0x0000_0003,
            // GPAW, FLEXIBLE_PENDING_VE, NO_RBP_MOD (`CONFIG_FLAGS_FIXED0`,
            // same file; FIXED1 is 0).
            config_flags_fixed0: 0b111,
            config_flags_fixed1: 0,
            // SSB_NO (4), RRSBA (19), BHI_NO (20), PBRSB_NO (24)
            // (src/common/x86_defs/msr_defs.h).
            arch_caps_config_mask: crate::ARCH_CAPS_CONFIG_MASK,
            // CWF, GNR-D, GNR-SP, SRF, EMR, SPR with their latest steppings
            // (src/common/helpers/cpuid_fms.c, cpuid_fms.h).
            allowed_fms: vec![0xD06D0, 0xA06E0, 0xA06D0, 0xA06F0, 0xC06F2, 0x806F8],
            max_vcpus_per_td: None,
            metadata: MetadataTables::Tdx1_5_01,
            cpuid_config: cpuid_config_1_5_01(),
            module_hv: 0,
            memory_pool_required_pages: 0,
            ext_required: false,
            tdmr_init_chunk: 4 << 20,
            leaf_versions: LEAF_VERSIONS_1_5_01.to_vec(),
            configurable_features: TdxFeatures0::new(),
            aug_before_finalize: true,
            hle_rtm_error_sets_rcx: false,
            cpuid_1f_topology: false,
        }
    }

    /// TDX module 1.5.05, from its public source (the `TDX 1.5.05` commit
    /// of the tdx-module history; `BUILD.md` names update version 5).
    ///
    /// What differs from 1.5.01 and is modelled:
    ///
    /// - TDX_FEATURES0.TOPOLOGY_ENUM (bit 20,
    ///   `src/common/metadata_handlers/metadata_sys.c`); TDH.VP.INIT in the
    ///   dispatcher's versioned list, version 1 taking the vCPU's x2APIC ID
    ///   in R8 (`tdx_vmm_dispatcher.c`, `api_calls/tdh_vp_init.c`);
    ///   MAX_VCPUS_PER_TD = 576, which TDH.MNG.INIT also enforces
    ///   (`td_control_structures.h`, `tdh_mng_init.c`).
    /// - Its TD metadata table and its 68-entry CPUID lookup (leaf 0x1F no
    ///   longer faulting, 0xB/0-2 and 0x1A added), so NUM_CPUID_VALUES is
    ///   68 and CPUID(0x1F) reads through TDH.MNG.RD
    ///   ([`MetadataTables::Tdx1_5_05`]).
    /// - Its 18 configurable CPUID leaves (NUM_CPUID_CONFIG 18: the six
    ///   CPUID(0x1F) sub-leaves, leaf 7/1's wider ALLOW_DIRECT masks), checked
    ///   in the module's lookup order, so TD_PARAMS' reserved area starts
    ///   after entry 17 (byte 544).
    /// - `check_cpuid_1f` after the CPUID walk
    ///   (`TDX_CPUID_LEAF_1F_FORMAT_UNRECOGNIZED`, RCX 0), and RCX := leaf
    ///   7/0 on the HLE ≠ RTM error.
    /// - ATTRIBUTES_FIXED0 with LASS (bit 27), reported and allowed only
    ///   on a CPU with LASS ([`NativeCpu::lass`](crate::NativeCpu::lass);
    ///   `td_control_structures.h`, `tdh_sys_init.c`).
    ///
    /// Kept from 1.5.01, as 1.5.05 has it too: TDX_FEATURES0's other bits,
    /// the other ATTRIBUTES bits, the XFAM and CONFIG_FLAGS fixed bits, the
    /// IA32_ARCH_CAPABILITIES configuration mask, the CPU models.
    ///
    /// Not modelled: a null CPUID(0x1F)
    /// configuration takes the CPU's own topology, which the model takes
    /// to be well formed; the CPUID values a TD sees (every CPUID read
    /// answers 0 in both profiles), so 1.5.05's changes to how they are
    /// computed (leaf 7/1, 0x1A, 0x23, the derived 0xB) do not show.
    pub fn tdx_1_5_05() -> Self {
        let mut p = Self::tdx_1_5();
        p.name = "tdx-1.5.05";
        p.version = (1, 5, 5);
        p.features0 = p.features0.with_topology_enum(true);
        p.max_vcpus_per_td = Some(576);
        // LASS (27) joins the attributes a TD may have (`td_control_structures.h`).
        p.attributes_fixed0 |= crate::machine::ATTRIBUTE_LASS;
        p.metadata = MetadataTables::Tdx1_5_05;
        p.leaf_versions.push((Leaf::VP_INIT, 1));
        p.cpuid_config = cpuid_config_1_5_05();
        p.hle_rtm_error_sets_rcx = true;
        p.cpuid_1f_topology = true;
        p
    }

    /// Intel TDX module 1.5.16+ as far as Dynamic PAMT goes, from its source
    /// (`tdh_phymem_pamt_add.c`, `tdh_phymem_pamt_remove.c`,
    /// `pamt_manager.c`, `tdh_sys_config.c`, `tdh_sys_tdmr_init.c`, read
    /// in the 1.5.25 drop): module 1.5.05's behaviour plus
    /// TDX_FEATURES0.DYNAMIC_PAMT (bit 36), the metadata fields
    /// PAMT_PAGE_BITMAP_ENTRY_BITS (1) and MIN_DYNAMIC_PAMT_NUM_HKID_BITS,
    /// TDH.SYS.CONFIG's R8 bit 16 and TDH.PHYMEM.PAMT.ADD/REMOVE. Without
    /// bit 16 in TDH.SYS.CONFIG it behaves as [`Profile::tdx_1_5_05`] (a
    /// static PAMT). Its version number is 1.5.16; its other changes since
    /// 1.5.05 are not modelled.
    pub fn tdx_1_5_16() -> Self {
        let mut p = Self::tdx_1_5_05();
        p.name = "tdx-1.5.16";
        p.version = (1, 5, 16);
        p.features0 = p.features0.with_dynamic_pamt(true);
        p
    }

    /// A module with Extensions: module 1.5.05's behaviour plus
    /// TDX_FEATURES0.EXT, a memory pool of 1000 pages (more than one
    /// 512-entry TDH.EXT.MEM.ADD window), EXT_REQUIRED, and the 2026
    /// version-1 leaves (TDH.SYS.CONFIG v1, TDH.SYS.UPDATE v1). A model of
    /// a newer module (no source was read for it): its version number is
    /// 1.5.05's.
    pub fn tdx_1_5_ext() -> Self {
        let mut p = Self::tdx_1_5_05();
        p.name = "tdx-1.5-ext";
        p.features0 = p.features0.with_ext(true);
        p.configurable_features = TdxFeatures0::new().with_ext(true);
        p.memory_pool_required_pages = 1000;
        p.ext_required = true;
        p.leaf_versions.push((Leaf::SYS_CONFIG, 1));
        p.leaf_versions.push((Leaf::SYS_UPDATE, 1));
        p
    }

    /// The profile named `name` (`"tdx-1.5"` for 1.5.01, `"tdx-1.5.05"`,
    /// `"tdx-1.5.16"`, `"tdx-1.5-ext"`).
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "tdx-1.5" => Some(Self::tdx_1_5()),
            "tdx-1.5.05" => Some(Self::tdx_1_5_05()),
            "tdx-1.5.16" => Some(Self::tdx_1_5_16()),
            "tdx-1.5-ext" => Some(Self::tdx_1_5_ext()),
            _ => None,
        }
    }

    /// True if the module runs on a CPU whose CPUID(1).EAX is `fms`: its
    /// family and model (all but the stepping, bits 3:0) are in
    /// [`Self::allowed_fms`].
    pub fn knows_cpu_model(&self, fms: u32) -> bool {
        self.allowed_fms.iter().any(|&a| a & !0xF == fms & !0xF)
    }

    /// True if the module has Extensions (TDX_FEATURES0 bit 39).
    pub fn has_ext(&self) -> bool {
        self.features0.ext()
    }

    /// True if the module has Dynamic PAMT (TDX_FEATURES0 bit 36).
    pub fn has_dynamic_pamt(&self) -> bool {
        self.features0.dynamic_pamt()
    }

    /// True if the dispatcher lets `leaf` through with a version above 0.
    pub fn versioned(&self, leaf: Leaf) -> bool {
        self.leaf_versions.iter().any(|(l, _)| *l == leaf)
    }

    /// The highest version `leaf` itself accepts.
    pub fn max_version(&self, leaf: Leaf) -> u8 {
        self.leaf_versions
            .iter()
            .find(|(l, _)| *l == leaf)
            .map_or(0, |&(_, v)| v)
    }

    /// The global metadata fields this module serves through TDH.SYS.RD, in
    /// the order "next field ID" walks them, without the CMR fields (those
    /// depend on the machine). A subset of the module's
    /// (`include/auto_gen/global_sys_fields_lookup.h`): every field the
    /// host side reads, and those TD_PARAMS checks publish
    /// (CONFIG_FLAGS_FIXED0/1, IA32_ARCH_CAPABILITIES_CONFIG_MASK).
    /// MAX_VCPUS_PER_TD only where the module has it.
    pub(crate) fn global_fields(&self) -> Vec<(tdx_types::metadata::MdFieldId, u64)> {
        let mut f = vec![
            (field::MINOR_VERSION, u64::from(self.version.1)),
            (field::MAJOR_VERSION, u64::from(self.version.0)),
            (field::UPDATE_VERSION, u64::from(self.version.2)),
            (field::TDX_FEATURES0, self.features0.into_bits()),
            (field::MODULE_HV, u64::from(self.module_hv)),
            (field::MAX_TDMRS, u64::from(self.max_tdmrs)),
            (
                field::MAX_RESERVED_PER_TDMR,
                u64::from(self.max_reserved_per_tdmr),
            ),
            (
                field::PAMT_4K_ENTRY_SIZE,
                u64::from(self.pamt_entry_size[0]),
            ),
            (
                field::PAMT_2M_ENTRY_SIZE,
                u64::from(self.pamt_entry_size[1]),
            ),
            (
                field::PAMT_1G_ENTRY_SIZE,
                u64::from(self.pamt_entry_size[2]),
            ),
            // Dynamic PAMT's two fields (class TDMR_INFO, codes 19 and 20)
            // follow; filtered out below for a module without it.
            (field::PAMT_PAGE_BITMAP_ENTRY_BITS, 1),
            // max(MAX_PA - 48, 0): the machine's MAX_PA is filled in when
            // the simulator is built.
            (field::MIN_DYNAMIC_PAMT_NUM_HKID_BITS, 0),
            (field::TDR_BASE_SIZE, u64::from(self.tdr_base_size)),
            (field::TDCS_BASE_SIZE, u64::from(self.tdcs_base_size)),
            (field::TDVPS_BASE_SIZE, u64::from(self.tdvps_base_size)),
            (field::ATTRIBUTES_FIXED0, self.attributes_fixed0),
            (field::ATTRIBUTES_FIXED1, self.attributes_fixed1),
            (field::XFAM_FIXED0, self.xfam_fixed0),
            (field::XFAM_FIXED1, self.xfam_fixed1),
            (field::NUM_CPUID_CONFIG, self.cpuid_config.len() as u64),
            (field::CONFIG_FLAGS_FIXED0, self.config_flags_fixed0),
            (field::CONFIG_FLAGS_FIXED1, self.config_flags_fixed1),
        ];
        if !self.has_dynamic_pamt() {
            f.retain(|(id, _)| {
                ![
                    field::PAMT_PAGE_BITMAP_ENTRY_BITS,
                    field::MIN_DYNAMIC_PAMT_NUM_HKID_BITS,
                ]
                .contains(id)
            });
        }
        if let Some(n) = self.max_vcpus_per_td {
            f.push((field::MAX_VCPUS_PER_TD, u64::from(n)));
        }
        // Both arrays have CPUID_CONFIG_ARRAY_LEN entries whatever the
        // module's count: past it, a leaf reads all ones and its values 0
        // (`metadata_sys.c`).
        for i in 0..CPUID_CONFIG_ARRAY_LEN {
            let leaf = self
                .cpuid_config
                .get(i as usize)
                .map_or(u64::MAX, CpuidConfig::leaf_subleaf);
            f.push((
                field::cpuid_config_leaf(i).expect("the array fits the metadata field"),
                leaf,
            ));
        }
        // Each leaf's CONFIG_DIRECT bits, not its ALLOW_DIRECT ones
        // (`metadata_sys.c`).
        for i in 0..CPUID_CONFIG_ARRAY_LEN {
            let direct = self
                .cpuid_config
                .get(i as usize)
                .map_or([0; 4], |c| c.config_direct);
            let [eax, ebx, ecx, edx] = direct.map(u64::from);
            f.push((
                field::cpuid_config_value(i, 0).expect("fits"),
                ebx << 32 | eax,
            ));
            f.push((
                field::cpuid_config_value(i, 1).expect("fits"),
                edx << 32 | ecx,
            ));
        }
        f.push((
            field::IA32_ARCH_CAPABILITIES_CONFIG_MASK,
            self.arch_caps_config_mask,
        ));
        if self.has_ext() {
            f.push((
                field::EXT_MEMORY_POOL_REQUIRED_PAGES,
                u64::from(self.memory_pool_required_pages),
            ));
            f.push((field::EXT_REQUIRED, u64::from(self.ext_required)));
        }
        f
    }
}

impl Default for Profile {
    fn default() -> Self {
        Self::tdx_1_5()
    }
}
