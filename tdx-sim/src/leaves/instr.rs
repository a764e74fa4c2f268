//! Guest instructions the module handles itself or turns into a #VE:
//! CPUID (`src/td_dispatcher/vm_exits/td_cpuid.c`) and RDMSR/WRMSR
//! (`src/td_dispatcher/vm_exits/td_msr_access.c`), Intel TDX module
//! 1.5.01. The guest model's side is [`crate::guest`].

use super::{metadata, mng::cpuid_entry};
use crate::{MachineDesc, state::Shared, td::Td};

/// VMX basic exit reasons (`src/common/x86_defs/vmcs_defs.h`).
pub(crate) const EXIT_CPUID: u32 = 10;
pub(crate) const EXIT_RDMSR: u32 = 31;
pub(crate) const EXIT_WRMSR: u32 = 32;

/// CPUID(0).EAX of a TD: the lookup table's FIXED1 0x23 with every other
/// bit FIXED0 (`cpuid_lookup[10]`, `include/auto_gen/cpuid_configurations.c`).
/// It is also the last base leaf the module samples from the CPU at
/// TDH.SYS.INIT (`cpuid_last_base_leaf`), which for the simulated CPU is
/// the same value (model choice).
pub(crate) const LAST_BASE_LEAF: u32 = 0x23;
/// The simulated CPU's last extended leaf (`cpuid_last_extended_leaf`,
/// model choice: the highest extended leaf in the module's table).
pub(crate) const LAST_EXTENDED_LEAF: u32 = 0x8000_0008;
/// CPUID leaves the module never clamps (`CPUID_RESERVED_START/END`).
const RESERVED_LEAVES: std::ops::RangeInclusive<u32> = 0x4000_0000..=0x4FFF_FFFF;

/// The TD's CPUID value of a leaf the module's lookup table has and does
/// not mark faulting, as TDH.MNG.INIT computes it (`tdh_mng_init.c`,
/// `read_and_set_cpuid_configurations`), without the dynamic fixups of
/// [`guest_cpuid`]; `None` for a leaf the module makes a #VE.
///
/// The native CPUID the computation starts from is the model's: the
/// simulated CPU has every ALLOW_DIRECT bit, leaf 0 its vendor string,
/// leaf 1 EAX its family/model/stepping ([`crate::NativeCpu::fms`]),
/// leaf 0x80000000 EAX [`LAST_EXTENDED_LEAF`]; every other native bit is
/// 0. On that, the module's rules: CONFIG_DIRECT bits take the TD_PARAMS
/// value, ALLOW_DIRECT bits are cleared where TD_PARAMS has 0, CPUID(0).EAX
/// is 0x23 and CPUID(1) has its FIXED1 bits (ECX bit 31, EDX bit 9,
/// `cpuid_lookup[0]`), CPUID(1).EAX 0 means the CPU's own F/M/S. The
/// other FIXED0/FIXED1 bits and the XFAM-dependent bits are not modelled.
pub(crate) fn td_cpuid(s: &Shared, td: &Td, leaf: u32, subleaf: u32) -> Option<[u32; 4]> {
    let ctl = td.ctl();
    td_cpuid_of(&s.machine.desc, ctl.params.as_deref(), leaf, subleaf)
}

/// [`td_cpuid`] for a TD whose TDH.MNG.INIT accepted `params` (`None`:
/// not initialized, no configuration) on the machine `desc`.
pub(crate) fn td_cpuid_of(
    desc: &MachineDesc,
    params: Option<&[u8; 1024]>,
    leaf: u32,
    subleaf: u32,
) -> Option<[u32; 4]> {
    let lookup = metadata::cpuid_lookup(desc.profile.metadata);
    let i = metadata::cpuid_index(lookup, leaf, subleaf)?;
    if lookup[i].2 {
        return None;
    }
    let mut v = match leaf {
        // "GenuineIntel" in EBX, EDX, ECX.
        0 => [LAST_BASE_LEAF, 0x756E_6547, 0x6C65_746E, 0x4965_6E69],
        1 => [desc.cpu.fms, 0, 1 << 31, 1 << 9],
        0x8000_0000 => [LAST_EXTENDED_LEAF, 0, 0, 0],
        _ => [0; 4],
    };
    let entry = desc.profile.cpuid_config.iter().position(|c| {
        c.leaf == lookup[i].0 && c.subleaf.unwrap_or(metadata::SUBLEAF_NA) == lookup[i].1
    });
    if let (Some(e), Some(p)) = (entry, params) {
        let c = &desc.profile.cpuid_config[e];
        let cfg = cpuid_entry(p, e);
        for r in 0..4 {
            v[r] = (v[r] & !c.config_direct[r]) | (cfg[r] & c.config_direct[r]);
            // The simulated CPU has every ALLOW_DIRECT bit: the TD sees
            // the configured value.
            v[r] = (v[r] & !c.allow_direct[r]) | (cfg[r] & c.allow_direct[r]);
        }
    }
    if leaf == 1 && v[0] == 0 {
        v[0] = desc.cpu.fms;
    }
    Some(v)
}

/// CPUID in the guest (`td_cpuid_exit`): a leaf above the last base or
/// extended leaf (outside 0x40000000-0x4FFFFFFF) reads as the last base
/// leaf; a leaf the table lacks or marks faulting is `None` (a #VE with
/// reason 10); otherwise the TD's value with the dynamic fixups the model
/// has state for: CPUID(1).EBX\[31:24\] = VCPU_INDEX, CPUID(0x80000001).EDX
/// bit 11 (SYSCALL) = 1 (the guest model runs in 64-bit mode). CR4.OSXSAVE
/// and CR4.PKE, which CPUID(1).ECX bit 27 and CPUID(7,0).ECX bit 4
/// reflect, are 0 in the model (no guest control registers); CPUID(0xD, 0
/// and 1).EBX, which the module reads from the CPU, is 0; IA32_TSX_CTRL is
/// not modelled. TDG.VP.CPUIDVE.SET's flag is the caller's
/// (`Request::Cpuid` in `tdg.rs`).
pub(crate) fn guest_cpuid(
    s: &Shared,
    td: &Td,
    vcpu_index: u32,
    leaf: u32,
    subleaf: u32,
) -> Option<[u32; 4]> {
    let leaf = if !RESERVED_LEAVES.contains(&leaf)
        && (leaf > LAST_EXTENDED_LEAF || (leaf > LAST_BASE_LEAF && leaf < 0x8000_0000))
    {
        LAST_BASE_LEAF
    } else {
        leaf
    };
    let mut v = td_cpuid(s, td, leaf, subleaf)?;
    match leaf {
        1 => v[1] = (v[1] & 0x00FF_FFFF) | (vcpu_index & 0xFF) << 24,
        0x8000_0001 => v[3] |= 1 << 11,
        _ => {}
    }
    Some(v)
}

/// The TDCS CPUID flags TDH.MNG.INIT derives from the TD's CPUID values
/// (`tdh_mng_init.c`: `cpuid_flags`), for the MSR rules and TDH.VP.ENTER.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuidFlags {
    /// CPUID(1).ECX bit 3.
    pub(crate) monitor_mwait: bool,
    /// CPUID(1).ECX bit 18.
    pub(crate) dca: bool,
    /// CPUID(1).ECX bit 24.
    pub(crate) tsc_deadline: bool,
    /// CPUID(7,0).EBX bit 4 (HLE).
    pub(crate) tsx: bool,
    /// CPUID(7,0).ECX bit 5.
    pub(crate) waitpkg: bool,
    /// CPUID(7,0).ECX bit 13.
    pub(crate) tme: bool,
    /// CPUID(7,0).EDX bit 18 (PCONFIG).
    pub(crate) mktme: bool,
}

pub(crate) fn cpuid_flags(s: &Shared, td: &Td) -> CpuidFlags {
    let l1 = td_cpuid(s, td, 1, 0).unwrap_or_default();
    let l7 = td_cpuid(s, td, 7, 0).unwrap_or_default();
    let bit = |r: u32, n: u32| r >> n & 1 != 0;
    CpuidFlags {
        monitor_mwait: bit(l1[2], 3),
        dca: bit(l1[2], 18),
        tsc_deadline: bit(l1[2], 24),
        tsx: bit(l7[1], 4),
        waitpkg: bit(l7[2], 5),
        tme: bit(l7[2], 13),
        mktme: bit(l7[3], 18),
    }
}

/// What an MSR-bitmap bit means (`msr_bitmap_bit_type`,
/// `src/common/helpers/helpers.h`): fixed 0 (the guest accesses the MSR
/// directly), fixed 1 (a VM exit), or dynamic: 0 when the TD has the
/// feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bit {
    F0,
    F1,
    Perfmon,
    Cet,
    Pt,
    Uli,
    Lbr,
    Umwait,
    Pks,
    Xfd,
    Tsx,
    Other,
}

/// What the module does on a VM exit for the MSR (`msr_bitmap_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Never exits (the bit is fixed 0).
    None,
    Ve,
    Gp,
    GpOrVe,
    /// Emulated by the module (`td_rdmsr_exit` / `td_wrmsr_exit`).
    Other,
}

use Act as A;
use Bit as B;

/// The module's MSR lookup table (`msr_lookup`,
/// `include/auto_gen/msr_config_lookup.c`, module 1.5.01): first and last
/// MSR, read bit and action, write bit and action. An MSR in the bitmap
/// ranges that the table lacks exits on both and is a #VE.
#[rustfmt::skip]
const MSR_LOOKUP: [(u32, u32, Bit, Act, Bit, Act); 134] = [
    (0x10, 0x10, B::F0, A::None, B::F1, A::Ve),             // TSC
    (0x48, 0x48, B::F0, A::None, B::F0, A::None),           // SPEC_CTRL
    (0x49, 0x49, B::F0, A::None, B::F0, A::None),           // PRED_CMD
    (0x87, 0x87, B::F1, A::GpOrVe, B::F1, A::GpOrVe),       // MKTME_PARTITIONING
    (0x8C, 0x8F, B::F1, A::Gp, B::F1, A::Gp),               // SGXLEPUBKEYHASH0-3
    (0x98, 0x98, B::F1, A::Gp, B::F1, A::Gp),               // WBINVDP
    (0x99, 0x99, B::F1, A::Gp, B::F1, A::Gp),               // WBNOINVDP
    (0x9A, 0x9A, B::F1, A::Gp, B::F1, A::Gp),               // INTR_PENDING
    (0x9B, 0x9B, B::F1, A::Gp, B::F1, A::Gp),               // SMM_MONITOR_CTL
    (0x9E, 0x9E, B::F1, A::Gp, B::F1, A::Gp),               // SMBASE
    (0xBC, 0xBC, B::F0, A::None, B::F1, A::Ve),             // MISC_PACKAGE_CTLS
    (0xBD, 0xBD, B::F1, A::Other, B::F0, A::None),          // XAPIC_DISABLE_STATUS
    (0xC1, 0xC8, B::Perfmon, A::Gp, B::Perfmon, A::Gp),     // PMC0-7
    (0xE1, 0xE1, B::Umwait, A::Gp, B::Umwait, A::Gp),       // UMWAIT_CONTROL
    (0x10A, 0x10A, B::F1, A::Other, B::F0, A::None),        // ARCH_CAPABILITIES
    (0x10B, 0x10B, B::F0, A::None, B::F0, A::None),         // FLUSH_CMD
    (0x122, 0x122, B::Tsx, A::Gp, B::Tsx, A::Gp),           // TSX_CTRL
    (0x174, 0x174, B::F0, A::None, B::F0, A::None),         // SYSENTER_CS
    (0x175, 0x175, B::F0, A::None, B::F0, A::None),         // SYSENTER_ESP
    (0x176, 0x176, B::F0, A::None, B::F0, A::None),         // SYSENTER_EIP
    (0x186, 0x18D, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // PERFEVTSEL0-7
    (0x195, 0x195, B::F1, A::Gp, B::F1, A::Gp),             // OVERCLOCKING_STATUS
    (0x1A0, 0x1A0, B::Perfmon, A::Other, B::F1, A::Ve),     // MISC_ENABLE
    (0x1A6, 0x1A7, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // OFFCORE_RSP0-1
    (0x1C4, 0x1C4, B::Xfd, A::Gp, B::Xfd, A::Gp),           // XFD
    (0x1C5, 0x1C5, B::Xfd, A::Gp, B::Xfd, A::Gp),           // XFD_ERR
    (0x1D9, 0x1D9, B::F1, A::Other, B::F1, A::Other),       // DEBUGCTL
    (0x1F8, 0x1F8, B::F1, A::GpOrVe, B::F1, A::GpOrVe),     // PLATFORM_DCA_CAP
    (0x1F9, 0x1F9, B::F1, A::GpOrVe, B::F1, A::GpOrVe),     // CPU_DCA_CAP
    (0x1FA, 0x1FA, B::F1, A::GpOrVe, B::F1, A::GpOrVe),     // DCA_0_CAP
    (0x276, 0x276, B::F1, A::Gp, B::F1, A::Gp),             // SLAM_ENABLE
    (0x277, 0x277, B::F0, A::None, B::F0, A::None),         // PAT
    (0x309, 0x310, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // FIXED_CTR0-7
    (0x329, 0x329, B::Other, A::Gp, B::Other, A::Gp),       // PERF_METRICS
    (0x345, 0x345, B::Other, A::Other, B::Perfmon, A::Gp),  // PERF_CAPABILITIES
    (0x38D, 0x38D, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // FIXED_CTR_CTRL
    (0x38E, 0x38E, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // PERF_GLOBAL_STATUS
    (0x38F, 0x38F, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // PERF_GLOBAL_CTRL
    (0x390, 0x390, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // PERF_GLOBAL_STATUS_RESET
    (0x391, 0x391, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // PERF_GLOBAL_STATUS_SET
    (0x392, 0x392, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // PERF_GLOBAL_INUSE
    (0x3F1, 0x3F1, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // PEBS_ENABLE
    (0x3F2, 0x3F2, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // PEBS_MATRIX_VECT
    (0x3F6, 0x3F6, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // PEBS_LD_LATENCY
    (0x3F7, 0x3F7, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // PEBS_FRONTEND
    (0x480, 0x480, B::F1, A::Other, B::F1, A::Gp),          // VMX_BASIC
    (0x481, 0x481, B::F1, A::Ve, B::F1, A::Gp),             // VMX_PINBASED_CTLS
    (0x482, 0x482, B::F1, A::Ve, B::F1, A::Gp),             // VMX_PROCBASED_CTLS
    (0x483, 0x483, B::F1, A::Ve, B::F1, A::Gp),             // VMX_EXIT_CTLS
    (0x484, 0x484, B::F1, A::Ve, B::F1, A::Gp),             // VMX_ENTRY_CTLS
    (0x485, 0x485, B::F1, A::Other, B::F1, A::Gp),          // VMX_MISC
    (0x486, 0x486, B::F1, A::Other, B::F1, A::Gp),          // VMX_CR0_FIXED0
    (0x487, 0x487, B::F1, A::Other, B::F1, A::Gp),          // VMX_CR0_FIXED1
    (0x488, 0x488, B::F1, A::Other, B::F1, A::Gp),          // VMX_CR4_FIXED0
    (0x489, 0x489, B::F1, A::Other, B::F1, A::Gp),          // VMX_CR4_FIXED1
    (0x48A, 0x48A, B::F1, A::Ve, B::F1, A::Gp),             // VMX_VMCS_ENUM
    (0x48B, 0x48B, B::F1, A::Other, B::F1, A::Gp),          // VMX_PROCBASED_CTLS2
    (0x48C, 0x48C, B::F1, A::Other, B::F1, A::Gp),          // VMX_EPT_VPID_CAP
    (0x48D, 0x48D, B::F1, A::Other, B::F1, A::Gp),          // VMX_TRUE_PINBASED_CTLS
    (0x48E, 0x48E, B::F1, A::Other, B::F1, A::Gp),          // VMX_TRUE_PROCBASED_CTLS
    (0x48F, 0x48F, B::F1, A::Other, B::F1, A::Gp),          // VMX_TRUE_EXIT_CTLS
    (0x490, 0x490, B::F1, A::Other, B::F1, A::Gp),          // VMX_TRUE_ENTRY_CTLS
    (0x491, 0x491, B::F1, A::Other, B::F1, A::Gp),          // VMX_VMFUNC
    (0x492, 0x492, B::F1, A::Other, B::F1, A::Gp),          // VMX_PROCBASED_CTLS3
    (0x4C1, 0x4C8, B::Perfmon, A::Gp, B::Perfmon, A::Gp),   // A_PMC0-7
    (0x500, 0x500, B::F1, A::Gp, B::F1, A::Gp),             // SGX_SVN_STATUS
    (0x560, 0x560, B::Pt, A::Gp, B::Pt, A::Gp),             // RTIT_OUTPUT_BASE
    (0x561, 0x561, B::Pt, A::Gp, B::Pt, A::Gp),             // RTIT_OUTPUT_MASK_PTRS
    (0x570, 0x570, B::Pt, A::Gp, B::Pt, A::Gp),             // RTIT_CTL
    (0x571, 0x571, B::Pt, A::Gp, B::Pt, A::Gp),             // RTIT_STATUS
    (0x572, 0x572, B::Pt, A::Gp, B::Pt, A::Gp),             // RTIT_CR3_MATCH
    (0x580, 0x580, B::Pt, A::Gp, B::Pt, A::Gp),             // RTIT_ADDR0_A
    (0x581, 0x581, B::Pt, A::Gp, B::Pt, A::Gp),             // RTIT_ADDR0_B
    (0x582, 0x582, B::Pt, A::Gp, B::Pt, A::Gp),             // RTIT_ADDR1_A
    (0x583, 0x583, B::Pt, A::Gp, B::Pt, A::Gp),             // RTIT_ADDR1_B
    (0x584, 0x584, B::Pt, A::Gp, B::Pt, A::Gp),             // RTIT_ADDR2_A
    (0x585, 0x585, B::Pt, A::Gp, B::Pt, A::Gp),             // RTIT_ADDR2_B
    (0x586, 0x586, B::Pt, A::Gp, B::Pt, A::Gp),             // RTIT_ADDR3_A
    (0x587, 0x587, B::Pt, A::Gp, B::Pt, A::Gp),             // RTIT_ADDR3_B
    (0x600, 0x600, B::F0, A::None, B::F0, A::None),         // DS_AREA
    (0x6A0, 0x6A0, B::Cet, A::Gp, B::Cet, A::Gp),           // U_CET
    (0x6A2, 0x6A2, B::Cet, A::Gp, B::Cet, A::Gp),           // S_CET
    (0x6A4, 0x6A4, B::Cet, A::Gp, B::Cet, A::Gp),           // PL0_SSP
    (0x6A5, 0x6A5, B::Cet, A::Gp, B::Cet, A::Gp),           // PL1_SSP
    (0x6A6, 0x6A6, B::Cet, A::Gp, B::Cet, A::Gp),           // PL2_SSP
    (0x6A7, 0x6A7, B::Cet, A::Gp, B::Cet, A::Gp),           // PL3_SSP
    (0x6A8, 0x6A8, B::Cet, A::Gp, B::Cet, A::Gp),           // INTERRUPT_SSP_TABLE_ADDR
    (0x6E0, 0x6E0, B::F1, A::GpOrVe, B::F1, A::GpOrVe),     // TSC_DEADLINE
    (0x6E1, 0x6E1, B::Pks, A::Gp, B::Pks, A::Gp),           // PKRS
    (0x800, 0x801, B::F1, A::Gp, B::F1, A::Gp),             // reserved x2APIC
    (0x804, 0x807, B::F1, A::Gp, B::F1, A::Gp),             // reserved x2APIC
    (0x808, 0x808, B::F0, A::None, B::F0, A::None),         // X2APIC_TPR
    (0x809, 0x809, B::F0, A::None, B::F0, A::None),         // reserved x2APIC
    (0x80A, 0x80A, B::F0, A::None, B::F0, A::None),         // X2APIC_PPR
    (0x80B, 0x80B, B::F0, A::None, B::F0, A::None),         // X2APIC_EOI
    (0x80C, 0x80C, B::F0, A::None, B::F0, A::None),         // reserved x2APIC
    (0x80E, 0x80E, B::F0, A::None, B::F0, A::None),         // reserved x2APIC
    (0x810, 0x817, B::F0, A::None, B::F0, A::None),         // X2APIC_ISR0-7
    (0x818, 0x81F, B::F0, A::None, B::F0, A::None),         // X2APIC_TMR0-7
    (0x820, 0x827, B::F0, A::None, B::F0, A::None),         // X2APIC_IRR0-7
    (0x829, 0x82E, B::F1, A::Gp, B::F1, A::Gp),             // reserved x2APIC
    (0x831, 0x831, B::F1, A::Gp, B::F1, A::Gp),             // reserved x2APIC
    (0x83F, 0x83F, B::F0, A::None, B::F0, A::None),         // X2APIC_SELF_IPI
    (0x840, 0x87F, B::F1, A::Gp, B::F1, A::Gp),             // reserved x2APIC
    (0x880, 0x8BF, B::F1, A::Gp, B::F1, A::Gp),             // reserved x2APIC
    (0x8C0, 0x8FF, B::F1, A::Gp, B::F1, A::Gp),             // reserved x2APIC
    (0x981, 0x981, B::F1, A::GpOrVe, B::F1, A::GpOrVe),     // TME_CAPABILITY
    (0x982, 0x982, B::F1, A::GpOrVe, B::F1, A::GpOrVe),     // TME_ACTIVATE
    (0x983, 0x983, B::F1, A::GpOrVe, B::F1, A::GpOrVe),     // TME_EXCLUDE_MASK
    (0x984, 0x984, B::F1, A::GpOrVe, B::F1, A::GpOrVe),     // TME_EXCLUDE_BASE
    (0x985, 0x985, B::Uli, A::Gp, B::Uli, A::Gp),           // UINTR_RR
    (0x986, 0x986, B::Uli, A::Gp, B::Uli, A::Gp),           // UINTR_HANDLER
    (0x987, 0x987, B::Uli, A::Gp, B::Uli, A::Gp),           // UINTR_STACKADJUST
    (0x988, 0x988, B::Uli, A::Gp, B::Uli, A::Gp),           // UINTR_MISC
    (0x989, 0x989, B::Uli, A::Gp, B::Uli, A::Gp),           // UINTR_PD
    (0x98A, 0x98A, B::Uli, A::Gp, B::Uli, A::Gp),           // UINTR_TT
    (0xC80, 0xC80, B::F0, A::None, B::F1, A::Ve),           // DEBUG_INTERFACE
    (0xD90, 0xD90, B::F1, A::Gp, B::F1, A::Gp),             // BNDCFGS
    (0xD93, 0xD93, B::F1, A::Gp, B::F1, A::Gp),             // PASID
    (0xDA0, 0xDA0, B::F0, A::None, B::F1, A::Other),        // XSS
    (0x1200, 0x12FF, B::Lbr, A::Gp, B::Lbr, A::Gp),         // LBR_INFO
    (0x14CE, 0x14CE, B::Lbr, A::Gp, B::Lbr, A::Gp),         // LBR_CTL
    (0x14CF, 0x14CF, B::Lbr, A::Gp, B::Lbr, A::Gp),         // LBR_DEPTH
    (0x1500, 0x15FF, B::Lbr, A::Gp, B::Lbr, A::Gp),         // LBR_x_FROM_IP
    (0x1600, 0x16FF, B::Lbr, A::Gp, B::Lbr, A::Gp),         // LBR_x_TO_IP
    (0x1B01, 0x1B01, B::F0, A::None, B::F0, A::None),       // UARCH_MISC_CTL
    (0xC000_0080, 0xC000_0080, B::F0, A::None, B::F1, A::Other), // EFER
    (0xC000_0081, 0xC000_0081, B::F0, A::None, B::F0, A::None),  // STAR
    (0xC000_0082, 0xC000_0082, B::F0, A::None, B::F0, A::None),  // LSTAR
    (0xC000_0084, 0xC000_0084, B::F0, A::None, B::F0, A::None),  // FMASK
    (0xC000_0100, 0xC000_0100, B::F0, A::None, B::F0, A::None),  // FS_BASE
    (0xC000_0101, 0xC000_0101, B::F0, A::None, B::F0, A::None),  // GS_BASE
    (0xC000_0102, 0xC000_0102, B::F0, A::None, B::F0, A::None),  // KERNEL_GS_BASE
    (0xC000_0103, 0xC000_0103, B::F0, A::None, B::F0, A::None),  // TSC_AUX
];

/// MSR indices the module emulates.
pub(crate) const IA32_TSC: u32 = 0x10;
pub(crate) const IA32_TSC_ADJUST: u32 = 0x3B;
pub(crate) const IA32_XAPIC_DISABLE_STATUS: u32 = 0xBD;
pub(crate) const IA32_ARCH_CAPABILITIES: u32 = 0x10A;
pub(crate) const IA32_MISC_ENABLE: u32 = 0x1A0;
pub(crate) const IA32_DEBUGCTL: u32 = 0x1D9;
pub(crate) const IA32_PAT: u32 = 0x277;
pub(crate) const IA32_PERF_CAPABILITIES: u32 = 0x345;
pub(crate) const IA32_XSS: u32 = 0xDA0;
pub(crate) const IA32_EFER: u32 = 0xC000_0080;

/// IA32_MISC_ENABLE bits: PERFMON_AVAILABLE (7), PEBS_UNAVAILABLE (12),
/// ENABLE_MONITOR_FSM (18), BOOT_NT4 (22) (`ia32_misc_enable_t`,
/// `src/common/x86_defs/msr_defs.h`).
pub(crate) const MISC_PERFMON_AVAILABLE: u64 = 1 << 7;
pub(crate) const MISC_PEBS_UNAVAILABLE: u64 = 1 << 12;
pub(crate) const MISC_ENABLE_MONITOR_FSM: u64 = 1 << 18;
pub(crate) const MISC_BOOT_NT4: u64 = 1 << 22;

/// The guest's initial values of the MSRs the model keeps per vCPU: IA32_PAT
/// and IA32_EFER as the TD VMCS starts (`td_vmcs_init.c`: PAT
/// 0x0007040600070406, EFER 0x901: SCE, LME, NXE); every other MSR reads 0
/// until the guest writes it.
pub(crate) fn initial_msr(msr: u32) -> u64 {
    match msr {
        IA32_PAT => 0x0007_0406_0007_0406,
        IA32_EFER => 0x901,
        _ => 0,
    }
}

/// DEBUGCTL's reserved bits: 5:3 and 63:16 (`ia32_debugctl_t`).
const DEBUGCTL_RESERVED: u64 = 0x38 | !0xFFFF;
const DEBUGCTL_EN_UNCORE_PMI: u64 = 1 << 13;
const DEBUGCTL_TR: u64 = 1 << 6;
const DEBUGCTL_BTS: u64 = 1 << 7;

/// ATTRIBUTES bits the MSR rules read: PKS (30), PERFMON (63).
const ATTR_PKS: u64 = 1 << 30;
const ATTR_PERFMON: u64 = 1 << 63;

/// What a guest RDMSR or WRMSR comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MsrOutcome {
    /// No VM exit: the guest reads or writes the MSR itself (the model's
    /// per-vCPU value, the simulated TSC for IA32_TSC).
    Direct,
    /// A VM exit the module emulates: the value read, or the write done.
    Handled(u64),
    /// A #VE (reason 31 or 32, qualification 0).
    Ve,
    /// A #GP(0).
    Gp,
}

/// The TD's state the MSR rules need.
pub(crate) struct MsrCtx<'a> {
    pub(crate) attributes: u64,
    pub(crate) xfam: u64,
    pub(crate) flags: CpuidFlags,
    /// The CPU's IA32_XSS bits (`ia32_xss_supported_mask`).
    pub(crate) xss_supported: u64,
    /// The host's IA32_MISC_ENABLE on the LP.
    pub(crate) host_misc_enable: u64,
    pub(crate) arch_capabilities: u64,
    /// The guest's current value of an MSR the model keeps.
    pub(crate) current: &'a dyn Fn(u32) -> u64,
}

impl MsrCtx<'_> {
    /// A dynamic bit is 0 (direct access) when the TD has the feature
    /// (`is_msr_dynamic_bit_cleared`, `src/common/helpers/helpers.c`).
    fn cleared(&self, msr: u32, bit: Bit) -> bool {
        let perfmon = self.attributes & ATTR_PERFMON != 0;
        let pt = self.xfam & (1 << 8) != 0;
        match bit {
            B::F0 => true,
            B::F1 => false,
            B::Perfmon => perfmon,
            B::Cet => self.xfam & (3 << 11) != 0,
            B::Pt => pt,
            B::Uli => self.xfam & (1 << 14) != 0,
            B::Lbr => self.xfam & (1 << 15) != 0,
            B::Umwait => self.flags.waitpkg,
            B::Pks => self.attributes & ATTR_PKS != 0,
            // CPUID(0xD, 1).EAX.XFD_SUPPORT: 0 on the simulated CPU.
            B::Xfd => false,
            B::Tsx => self.flags.tsx,
            // PERF_CAPABILITIES: PERFMON and PT; PERF_METRICS: PERFMON and
            // the CPU's PERF_METRICS_AVAILABLE, which the simulated CPU
            // lacks.
            B::Other => msr == IA32_PERF_CAPABILITIES && perfmon && pt,
        }
    }
}

/// A guest RDMSR (`wr` false) or WRMSR of `value` (`td_rdmsr_exit`,
/// `td_wrmsr_exit`, `rd_wr_msr_generic_case`): an MSR outside
/// 0-0x1FFF and 0xC0000000-0xC0001FFF is a #VE; one whose bitmap bit is 0
/// is accessed directly; on a VM exit the module emulates WRMSR of XSS,
/// DEBUGCTL and EFER and RDMSR of DEBUGCTL, MISC_ENABLE,
/// PERF_CAPABILITIES, ARCH_CAPABILITIES, XAPIC_DISABLE_STATUS and the VMX
/// capability MSRs, and otherwise does the table's action.
pub(crate) fn msr_access(c: &MsrCtx<'_>, msr: u32, wr: bool, value: u64) -> MsrOutcome {
    let in_bitmap = msr < 0x2000 || (0xC000_0000..0xC000_2000).contains(&msr);
    if !in_bitmap {
        return MsrOutcome::Ve;
    }
    let Some(&(_, _, rb, ra, wb, wa)) = MSR_LOOKUP
        .iter()
        .find(|&&(lo, hi, ..)| (lo..=hi).contains(&msr))
    else {
        // Not in the table: the bitmap bit stays 1 and the action is #VE.
        return MsrOutcome::Ve;
    };
    let (bit, act) = if wr { (wb, wa) } else { (rb, ra) };
    if c.cleared(msr, bit) {
        return MsrOutcome::Direct;
    }
    if wr {
        match msr {
            IA32_XSS => {
                return if value & !(c.xss_supported & c.xfam) != 0 {
                    MsrOutcome::Gp
                } else {
                    MsrOutcome::Handled(value)
                };
            }
            IA32_DEBUGCTL => {
                if value & DEBUGCTL_RESERVED != 0 {
                    return MsrOutcome::Gp;
                }
                if value & DEBUGCTL_TR != 0 && value & DEBUGCTL_BTS == 0 {
                    return MsrOutcome::Ve;
                }
                let old = (c.current)(IA32_DEBUGCTL);
                let v = (value & !DEBUGCTL_EN_UNCORE_PMI) | (old & DEBUGCTL_EN_UNCORE_PMI);
                return MsrOutcome::Handled(v);
            }
            IA32_EFER => {
                // LMA (bit 10) is read-only; only SCE (bit 0) may change.
                const LMA: u64 = 1 << 10;
                let old = (c.current)(IA32_EFER);
                let new = (value & !LMA) | (old & LMA);
                return if (new ^ old) & !1 != 0 {
                    MsrOutcome::Ve
                } else {
                    MsrOutcome::Handled(new)
                };
            }
            _ => {}
        }
    } else {
        match msr {
            IA32_DEBUGCTL => {
                return MsrOutcome::Handled((c.current)(IA32_DEBUGCTL) & !DEBUGCTL_EN_UNCORE_PMI);
            }
            // Only reached without PERFMON (else the read is direct).
            IA32_MISC_ENABLE => {
                let v = (c.host_misc_enable & !MISC_PERFMON_AVAILABLE) | MISC_PEBS_UNAVAILABLE;
                return MsrOutcome::Handled(v);
            }
            // PERFMON without PT would return the CPU's value with bit 16
            // cleared; the simulated CPU's PERF_CAPABILITIES is 0.
            IA32_PERF_CAPABILITIES => return MsrOutcome::Handled(0),
            // The value TDH.MNG.INIT computed; the model passes the CPU's
            // (`NativeCpu::arch_capabilities`) without the module's masks.
            IA32_ARCH_CAPABILITIES => return MsrOutcome::Handled(c.arch_capabilities),
            IA32_XAPIC_DISABLE_STATUS => return MsrOutcome::Handled(1),
            // The VMX capability MSRs with action "other": the module's
            // virtual values (for L2 VMs) are not modelled; they read 0.
            0x480 | 0x485..=0x489 | 0x48B..=0x492 => return MsrOutcome::Handled(0),
            _ => {}
        }
    }
    match act {
        A::Ve => MsrOutcome::Ve,
        A::Gp => MsrOutcome::Gp,
        A::GpOrVe => {
            let has = match msr {
                0x1F8..=0x1FA => c.flags.dca,
                0x981..=0x984 => c.flags.tme,
                0x87 => c.flags.mktme,
                _ => c.flags.tsc_deadline, // 0x6E0
            };
            if has { MsrOutcome::Ve } else { MsrOutcome::Gp }
        }
        // The module would fail fatally; the table has no such case.
        A::None | A::Other => MsrOutcome::Ve,
    }
}
