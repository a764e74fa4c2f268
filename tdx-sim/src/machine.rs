//! The description of a simulated host: memory, CMRs, NUMA nodes, CPUs and
//! packages, the KeyID partition, and the TDX module profile.

use serde::Deserialize;
use tdx_api::{
    Errata,
    plan::{MemRange, PlanInput},
};
use tdx_types::metadata::KeyIdPartition;

use crate::profile::Profile;

/// Byte ranges `[start, end)`.
pub(crate) type Ranges = Vec<(u64, u64)>;

/// Most logical processors a simulated machine may have.
pub const MAX_LPS: u32 = 1 << 16;

/// Most CMRs a module reports (`MAX_CMRS`).
pub const MAX_CMRS: usize = 32;

/// What the TDX module samples from the CPU at TDH.SYS.INIT and later
/// checks TD_PARAMS against (TDH.MNG.INIT): the platform facts that decide
/// which TD configurations a machine accepts.
///
/// The defaults describe a Sapphire Rapids (family 6, model 0x8F,
/// stepping 8) with TSX and 5-level EPT, whose supported XFAM is exactly
/// what the simulator accepted before these facts were settings: x87, SSE,
/// AVX, AVX-512, PKRU and AMX in XCR0; PT and CET in IA32_XSS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeCpu {
    /// CPUID(0xD, 0).EAX: the XCR0 features the CPU supports. The module
    /// keeps bits 0x602FF of it (`XCR0_USER_BIT_MASK`,
    /// `src/vmm_dispatcher/api_calls/tdh_sys_init.c`).
    pub xcr0_supported: u64,
    /// CPUID(0xD, 1).ECX: the IA32_XSS features the CPU supports. The
    /// module keeps bits 0x1FD00 of it (`XCR0_SUPERVISOR_BIT_MASK`).
    pub xss_supported: u64,
    /// IA32_VMX_EPT_VPID_CAP bit 7: 5-level EPT. Without it TD_PARAMS may
    /// not ask for a 5-level walk (`verify_and_set_td_eptp_controls`,
    /// `src/common/helpers/helpers.c`).
    pub ept_pml5: bool,
    /// CPUID(1).EAX, family/model/stepping, with the lowest stepping of all
    /// packages (the module's `platform_fms`). Must be a CPU model module
    /// 1.5.01 knows (`src/common/helpers/cpuid_fms.h`), with bits 31:28 and
    /// 15:14 clear.
    pub fms: u32,
    /// CPUID(7, 0).EBX bit 4, HLE.
    pub hle: bool,
    /// CPUID(7, 0).EBX bit 11, RTM.
    pub rtm: bool,
    /// IA32_ARCH_CAPABILITIES (MSR 0x10A) as sampled at TDH.SYS.INIT. Bit 7
    /// (TSX_CTRL) decides whether a TD may have TSX.
    pub arch_capabilities: u64,
    /// CPUID(7, 1).EAX bit 6, LASS. Module 1.5.05 lets a TD have
    /// ATTRIBUTES.LASS (bit 27) only on a CPU with it (`tdh_sys_init.c`);
    /// module 1.5.01 never does.
    pub lass: bool,
}

impl NativeCpu {
    /// The bits of CPUID(0xD, 0).EAX the module uses (`XCR0_USER_BIT_MASK`).
    pub const XCR0_USER_MASK: u64 = 0x0006_02FF;
    /// The bits of CPUID(0xD, 1).ECX the module uses
    /// (`XCR0_SUPERVISOR_BIT_MASK`).
    pub const XSS_SUPERVISOR_MASK: u64 = 0x0001_FD00;
    /// IA32_ARCH_CAPABILITIES bit 7, TSX_CTRL.
    pub const ARCH_CAP_TSX_CTRL: u64 = 1 << 7;

    /// The XFAM bits the CPU supports, as the module computes them:
    /// `(XCR0 & 0x602FF) | (XSS & 0x1FD00)`.
    pub fn xfam_supported(&self) -> u64 {
        (self.xcr0_supported & Self::XCR0_USER_MASK)
            | (self.xss_supported & Self::XSS_SUPERVISOR_MASK)
    }
}

impl Default for NativeCpu {
    fn default() -> Self {
        Self {
            // x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM, PKRU, TILECFG, TILEDATA.
            xcr0_supported: 0x0006_02E7,
            // PT, CET_U, CET_S.
            xss_supported: 0x0000_1900,
            ept_pml5: true,
            fms: 0x0008_06F8,
            hle: true,
            rtm: true,
            // RDCL_NO, IBRS_ALL, SKIP_L1DFL_VMENTRY, MDS_NO, PSCHANGE_MC_NO,
            // TSX_CTRL, TAA_NO.
            arch_capabilities: 0x1EB,
            lass: false,
        }
    }
}

/// ATTRIBUTES bit 27, LASS.
pub(crate) const ATTRIBUTE_LASS: u64 = 1 << 27;

/// A simulated host, before it is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineDesc {
    /// Usable RAM as `[start, end)` byte ranges (rounded inward to 4 KiB).
    pub memory: Vec<(u64, u64)>,
    /// Convertible memory ranges; `None` means "the same as `memory`".
    pub cmrs: Option<Vec<(u64, u64)>>,
    /// NUMA nodes as `[start, end)` byte ranges with their node ID. Memory
    /// outside every range is on node 0.
    pub numa: Vec<(u64, u64, u32)>,
    /// Number of packages.
    pub packages: u32,
    /// Logical processors per package; LP `n` is on package
    /// `n / lps_per_package`.
    pub lps_per_package: u32,
    /// MKTME KeyIDs (MSR 0x87 bits 31:0).
    pub mktme_keyids: u32,
    /// TDX private KeyIDs (MSR 0x87 bits 63:32).
    pub tdx_keyids: u32,
    /// Physical address width (CPUID(0x80000008).EAX bits 7:0, the module's
    /// `max_pa`); the KeyID bits are its top bits
    /// ([`hkid_start_bit`](Self::hkid_start_bit)). 52 by default; a real
    /// Sapphire Rapids has 46. Below 49, TD_PARAMS may not ask for 5-level
    /// EPT (`MIN_PA_FOR_PML5`, `src/common/helpers/helpers.c`).
    pub phys_addr_bits: u32,
    /// What the module reads from the CPU to check TD_PARAMS.
    pub cpu: NativeCpu,
    /// The SEAM range register `[base, end)`, if any; shared buffers must
    /// not overlap it.
    pub seamrr: Option<(u64, u64)>,
    /// CPU errata.
    pub errata: Errata,
    /// The TDX module.
    pub profile: Profile,
    /// What the simulator, as a [`Platform`](tdx_api::Platform), answers
    /// for `keyid_shift` when it should not be the truth
    /// ([`hkid_start_bit`](Self::hkid_start_bit)): a platform bug to test a
    /// host's checks against. `None` (the default) reports the truth.
    pub reported_keyid_shift: Option<u32>,
}

/// Why a machine description cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// No usable memory.
    #[error("the machine has no usable memory")]
    NoMemory,
    /// Memory ranges overlap or are out of order.
    #[error("memory range {index} [{start:#x}, {end:#x}) overlaps or precedes the one before")]
    MemoryNotSorted {
        /// Index of the range.
        index: usize,
        /// Its start.
        start: u64,
        /// Its end.
        end: u64,
    },
    /// More CMRs than the module reports.
    #[error("{0} CMRs, the module reports at most 32 (give `cmrs` explicitly)")]
    TooManyCmrs(usize),
    /// A CMR is not 4 KiB aligned or empty.
    #[error("CMR {index} [{start:#x}, {end:#x}) is empty or not 4 KiB aligned")]
    BadCmr {
        /// Index of the CMR.
        index: usize,
        /// Its start.
        start: u64,
        /// Its end.
        end: u64,
    },
    /// More logical processors than the simulator models.
    #[error(
        "{packages} packages x {lps_per_package} LPs is more than {MAX_LPS} logical processors"
    )]
    TooManyCpus {
        /// Packages asked for.
        packages: u32,
        /// LPs per package asked for.
        lps_per_package: u32,
    },
    /// The CPU topology is empty.
    #[error("the machine needs at least one package and one logical processor per package")]
    NoCpus,
    /// The KeyID partition is unusable for TDX.
    #[error("KeyID partition: {0}")]
    KeyIds(#[from] tdx_types::metadata::KeyIdPartitionError),
    /// The KeyIDs do not fit below the physical address width.
    #[error("{keyid_bits} KeyID bits do not fit below a {phys_addr_bits}-bit physical address")]
    KeyIdBits {
        /// Bits needed for the KeyIDs.
        keyid_bits: u32,
        /// The physical address width.
        phys_addr_bits: u32,
    },
    /// Memory beyond the physical address width (below the KeyID bits).
    #[error("memory reaches {end:#x}, past the {bits}-bit address space below the KeyID bits")]
    MemoryTooHigh {
        /// End of the highest range.
        end: u64,
        /// Bits of address below the KeyID bits.
        bits: u32,
    },
    /// The JSON could not be read.
    #[error("memory map JSON: {0}")]
    Json(String),
    /// The NUMA description is inconsistent.
    #[error("numa_nodes has {ranges} ranges but numa_node_ids has {ids} IDs")]
    NumaMismatch {
        /// Node ranges.
        ranges: usize,
        /// Node IDs.
        ids: usize,
    },
    /// Unknown module profile name.
    #[error("unknown module profile {0:?} (known: tdx-1.5, tdx-1.5.05, tdx-1.5.16, tdx-1.5-ext)")]
    UnknownProfile(String),
    /// The CPU's family and model are not one the module runs on, or
    /// CPUID(1).EAX has reserved bits set.
    #[error("CPUID(1).EAX {0:#x} is not a CPU model the module knows")]
    UnknownCpuModel(u32),
}

/// The JSON shape of `memmaps/*.json` (other keys are ignored).
#[derive(Debug, Deserialize)]
struct MemmapJson {
    usable: Vec<[u64; 2]>,
    #[serde(default)]
    cmrs: Option<Vec<[u64; 2]>>,
    #[serde(default)]
    numa_nodes: Option<Vec<[u64; 2]>>,
    #[serde(default)]
    numa_node_ids: Option<Vec<u32>>,
}

impl MachineDesc {
    /// What a host would give the planner for this machine: its usable
    /// memory, split where NUMA ranges begin and end (memory outside every
    /// NUMA range is on node 0); no CMRs (bring-up reads them from the
    /// module), limits from the module at bring-up.
    pub fn plan_input(&self) -> PlanInput {
        let mut usable = Vec::new();
        for &(start, end) in &self.memory {
            let mut at = start;
            for &(ns, ne, node) in &self.numa {
                let (s, e) = (at.max(ns), end.min(ne));
                if s >= e {
                    continue;
                }
                if s > at {
                    usable.push(MemRange {
                        start: at,
                        end: s,
                        node: 0,
                    });
                }
                usable.push(MemRange {
                    start: s,
                    end: e,
                    node,
                });
                at = e;
            }
            if at < end {
                usable.push(MemRange {
                    start: at,
                    end,
                    node: 0,
                });
            }
        }
        PlanInput::new(usable)
    }

    /// A machine with `memory` and defaults for everything else: one
    /// package with one logical processor, 31 MKTME and 32 TDX KeyIDs,
    /// 52-bit addresses, CMRs equal to the memory, module 1.5.
    pub fn new(memory: Vec<(u64, u64)>) -> Self {
        Self {
            memory,
            cmrs: None,
            numa: Vec::new(),
            packages: 1,
            lps_per_package: 1,
            mktme_keyids: 31,
            tdx_keyids: 32,
            phys_addr_bits: 52,
            cpu: NativeCpu::default(),
            seamrr: None,
            errata: Errata::default(),
            profile: Profile::default(),
            reported_keyid_shift: None,
        }
    }

    /// A machine from the JSON shape of the shared memory maps (`usable`,
    /// optional `cmrs`, optional `numa_nodes` + `numa_node_ids`).
    pub fn from_memmap_json(text: &str) -> Result<Self, MachineError> {
        let j: MemmapJson =
            serde_json::from_str(text).map_err(|e| MachineError::Json(e.to_string()))?;
        let mut m = Self::new(j.usable.iter().map(|r| (r[0], r[1])).collect());
        m.cmrs = j.cmrs.map(|c| c.iter().map(|r| (r[0], r[1])).collect());
        if let Some(nodes) = j.numa_nodes {
            let ids = j
                .numa_node_ids
                .unwrap_or_else(|| (0..nodes.len() as u32).collect());
            if ids.len() != nodes.len() {
                return Err(MachineError::NumaMismatch {
                    ranges: nodes.len(),
                    ids: ids.len(),
                });
            }
            m.numa = nodes
                .iter()
                .zip(ids)
                .map(|(r, id)| (r[0], r[1], id))
                .collect();
        }
        Ok(m)
    }

    /// `packages` packages of `lps_per_package` logical processors.
    pub fn with_cpus(mut self, packages: u32, lps_per_package: u32) -> Self {
        self.packages = packages;
        self.lps_per_package = lps_per_package;
        self
    }

    /// The module profile.
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// The CPU facts the module checks TD_PARAMS against.
    pub fn with_cpu(mut self, cpu: NativeCpu) -> Self {
        self.cpu = cpu;
        self
    }

    /// XFAM_FIXED0 as the module computes and reports it: the profile's
    /// XFAM bits ANDed with what the CPU supports
    /// (`check_xfam`, `src/common/helpers/helpers.c`; `metadata_sys.c`).
    pub fn xfam_fixed0(&self) -> u64 {
        self.profile.xfam_fixed0 & self.cpu.xfam_supported()
    }

    /// ATTRIBUTES_FIXED0 as the module computes and reports it: the
    /// profile's bits, without LASS (bit 27) on a CPU without LASS
    /// (`tdh_sys_init.c` of 1.5.05; 1.5.01's bits have no LASS).
    pub fn attributes_fixed0(&self) -> u64 {
        if self.cpu.lass {
            self.profile.attributes_fixed0
        } else {
            self.profile.attributes_fixed0 & !ATTRIBUTE_LASS
        }
    }

    /// The KeyID partition.
    pub fn with_keyids(mut self, mktme: u32, tdx: u32) -> Self {
        self.mktme_keyids = mktme;
        self.tdx_keyids = tdx;
        self
    }

    /// Number of logical processors (saturating; `validate` caps it).
    pub fn lps(&self) -> u32 {
        self.packages.saturating_mul(self.lps_per_package)
    }

    /// MSR 0x87 as the host reads it.
    pub fn keyid_partition(&self) -> KeyIdPartition {
        KeyIdPartition::new()
            .with_nr_mktme_keyids(self.mktme_keyids)
            .with_nr_tdx_keyids(self.tdx_keyids)
    }

    /// Bits the KeyIDs take: enough for every KeyID including 0.
    pub fn keyid_bits(&self) -> u32 {
        let total = u64::from(self.mktme_keyids) + u64::from(self.tdx_keyids) + 1;
        64 - (total - 1).leading_zeros()
    }

    /// First address bit of the KeyID field.
    pub fn hkid_start_bit(&self) -> u32 {
        self.phys_addr_bits.saturating_sub(self.keyid_bits())
    }

    /// Checks the description and returns the normalized memory (4 KiB
    /// aligned, inward) and CMR lists.
    pub(crate) fn validate(&self) -> Result<(Ranges, Ranges), MachineError> {
        if self.packages == 0 || self.lps_per_package == 0 {
            return Err(MachineError::NoCpus);
        }
        if u64::from(self.packages) * u64::from(self.lps_per_package) > u64::from(MAX_LPS) {
            return Err(MachineError::TooManyCpus {
                packages: self.packages,
                lps_per_package: self.lps_per_package,
            });
        }
        self.keyid_partition().check()?;
        // SEAMLDR loads the module only on the CPU models it knows, so its
        // F/M/S checks always find the platform in its list (`cpuid_fms.c`).
        if self.cpu.fms & 0xF000_C000 != 0 || !self.profile.knows_cpu_model(self.cpu.fms) {
            return Err(MachineError::UnknownCpuModel(self.cpu.fms));
        }
        if self.keyid_bits() >= self.phys_addr_bits || self.phys_addr_bits > 52 {
            return Err(MachineError::KeyIdBits {
                keyid_bits: self.keyid_bits(),
                phys_addr_bits: self.phys_addr_bits,
            });
        }
        let mut memory = Vec::new();
        let mut prev_end = 0;
        for (index, &(start, end)) in self.memory.iter().enumerate() {
            let (s, e) = (start.next_multiple_of(4096), end & !4095);
            if start < prev_end || end < start {
                return Err(MachineError::MemoryNotSorted { index, start, end });
            }
            prev_end = end;
            if s < e {
                memory.push((s, e));
            }
        }
        let top = memory.last().ok_or(MachineError::NoMemory)?.1;
        if top > 1 << self.hkid_start_bit() {
            return Err(MachineError::MemoryTooHigh {
                end: top,
                bits: self.hkid_start_bit(),
            });
        }
        let cmrs = match &self.cmrs {
            Some(c) => c.clone(),
            None => memory.clone(),
        };
        if cmrs.len() > MAX_CMRS {
            return Err(MachineError::TooManyCmrs(cmrs.len()));
        }
        for (index, &(start, end)) in cmrs.iter().enumerate() {
            if start >= end || start % 4096 != 0 || end % 4096 != 0 {
                return Err(MachineError::BadCmr { index, start, end });
            }
        }
        Ok((memory, cmrs))
    }

    /// The NUMA node of a byte address.
    pub(crate) fn node_of(&self, pa: u64) -> u32 {
        self.numa
            .iter()
            .find(|&&(s, e, _)| pa >= s && pa < e)
            .map_or(0, |&(_, _, n)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_input_splits_memory_at_numa_boundaries() {
        let mut d = MachineDesc::new(vec![(0x1000, 0x9000), (0x10000, 0x20000)]);
        d.numa = vec![(0x4000, 0x6000, 1), (0x10000, 0x18000, 2)];
        let got: Vec<(u64, u64, u32)> = d
            .plan_input()
            .usable
            .iter()
            .map(|r| (r.start, r.end, r.node))
            .collect();
        assert_eq!(
            got,
            [
                (0x1000, 0x4000, 0),
                (0x4000, 0x6000, 1),
                (0x6000, 0x9000, 0),
                (0x10000, 0x18000, 2),
                (0x18000, 0x20000, 0),
            ]
        );
    }
}

/// A host MSR of the simulated CPU that the module checks and a test may
/// set per LP ([`Simulator::set_host_msr`](crate::Simulator::set_host_msr)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostMsr {
    /// IA32_TSC_ADJUST (0x3B), 0 by default. TDH.SYS.INIT samples it on its
    /// LP; TDH.SYS.LP.INIT, TDH.MNG.INIT, TDH.VP.INIT and TDH.VP.ENTER on an
    /// LP whose value differs fail with `TDX_INCONSISTENT_MSR|0x3B`
    /// (`src/vmm_dispatcher/api_calls/tdh_sys_lp_init.c`, `tdh_mng_init.c`,
    /// `tdh_vp_init.c`, `src/td_transitions/tdh_vp_enter.c`).
    TscAdjust,
    /// IA32_MISC_ENABLE (0x1A0), 0x850089 by default (fast strings, TCC,
    /// performance monitoring available, EIST, ENABLE_MONITOR_FSM, xTPR
    /// disable; a typical server value). BOOT_NT4 (bit 22) makes
    /// TDH.SYS.INIT, TDH.SYS.LP.INIT, TDH.MNG.INIT and TDH.VP.ENTER fail
    /// with `TDX_LIMIT_CPUID_MAXVAL_SET`; for a TD with MONITOR/MWAIT,
    /// TDH.VP.ENTER needs ENABLE_MONITOR_FSM (bit 18), else
    /// `TDX_INCORRECT_MSR_VALUE|0x1A0`. A guest RDMSR of it in a TD without
    /// PERFMON reads this value with bit 7 cleared and bit 12 set.
    MiscEnable,
}

impl HostMsr {
    /// The MSR's index.
    pub fn index(self) -> u32 {
        match self {
            HostMsr::TscAdjust => 0x3B,
            HostMsr::MiscEnable => 0x1A0,
        }
    }

    /// The value an LP has until a test sets it.
    pub fn default_value(self) -> u64 {
        match self {
            HostMsr::TscAdjust => 0,
            HostMsr::MiscEnable => 0x0085_0089,
        }
    }
}
