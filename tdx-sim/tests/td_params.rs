//! TDH.MNG.INIT's TD_PARAMS rules, one test per rule and path, against
//! TDX module 1.5.01 (`src/vmm_dispatcher/api_calls/tdh_mng_init.c` and the
//! helpers it calls): every refused value with its status and the output
//! registers (RCX 0, or the CPUID leaf/subleaf where the module reports
//! one; RDX and R8-R11 as the caller passed them), the accepted neighbours,
//! the order of the checks, and the machine's CPU facts that decide some
//! of them (supported XFAM, 5-level EPT, the physical address width,
//! family/model/stepping, TSX), including their place in a trace's machine
//! line.

mod td_support;

use td_support::*;
use tdx_sim::{MachineDesc, MachineError, NativeCpu, Profile, Simulator, TraceMachine, trace};
use tdx_types::{
    Hpa, Leaf, OperandId, TdxStatus,
    abi::{CPUID_CONFIG_1_5_01, CpuidValues},
    metadata::field,
};

const RDX: OperandId = OperandId::RDX;

/// R8-R11 as the tests pass them: TDH.MNG.INIT must leave them alone.
const UNTOUCHED: [u64; 4] = [
    0x0808_0808_0808_0808,
    0x0909_0909_0909_0909,
    0x1010_1010_1010_1010,
    0x1111_1111_1111_1111,
];

/// `TDX_OPERAND_INVALID|CPUID_CONFIG`.
fn cpuid_invalid() -> TdxStatus {
    invalid(OperandId::CPUID_CONFIG)
}

/// A host whose CPU facts are `cpu`.
fn host_cpu(cpu: NativeCpu) -> Simulator {
    host_with(Profile::tdx_1_5(), |d| d.with_cpu(cpu))
}

/// TDs on one host, a fresh one (fresh HKID) for every accepted case.
struct Tds<'a> {
    sim: &'a Simulator,
    hkid: u16,
    /// The TD refused cases run on (it stays UNINITIALIZED).
    td: Td,
}

impl<'a> Tds<'a> {
    fn new(sim: &'a Simulator) -> Self {
        let hkid = td_hkid(sim);
        let td = Td::build_with(sim, hkid, Stage::TdcsAdded);
        Self {
            sim,
            hkid: hkid + 1,
            td,
        }
    }

    fn fresh(&mut self) -> Td {
        let td = Td::build_with(self.sim, self.hkid, Stage::TdcsAdded);
        self.hkid += 1;
        td
    }

    /// TDH.MNG.INIT of `p` refused with `status` and `rcx`, every other
    /// output register as passed.
    fn refused(&mut self, what: &str, p: &Params, status: TdxStatus, rcx: u64) {
        let sim = self.sim;
        expect(sim, &mut self.td, p, status, rcx, what);
    }

    /// TDH.MNG.INIT of `p` accepted (on a fresh TD): status 0, RCX 0.
    fn accepted(&mut self, what: &str, p: &Params) {
        let mut td = self.fresh();
        expect(self.sim, &mut td, p, TdxStatus::SUCCESS, 0, what);
    }
}

/// TDH.MNG.INIT of `p` on `td` with R8-R11 set to [`UNTOUCHED`]: asserts
/// the status, RCX = `rcx`, RDX = the TD_PARAMS address passed, R8-R11
/// unchanged.
fn expect(sim: &Simulator, td: &mut Td, p: &Params, status: TdxStatus, rcx: u64, what: &str) {
    let pa = td.page(sim).hpa().as_u64();
    write(sim, Hpa::new(pa), &p.0);
    let [r8, r9, r10, r11] = UNTOUCHED;
    let (s, out) = raw(
        sim,
        Leaf::MNG_INIT.v0(),
        [td.tdr.hpa().as_u64(), pa, r8, r9, r10, r11],
    );
    assert_eq!(s, status, "{what}: status");
    assert_eq!(out.rcx, rcx, "{what}: RCX");
    assert_eq!(out.rdx, pa, "{what}: RDX is never written");
    assert_eq!(
        [out.r8, out.r9, out.r10, out.r11],
        UNTOUCHED,
        "{what}: R8-R11"
    );
}

/// [`Params::new`] changed by `f`.
fn params(f: impl FnOnce(&mut Params)) -> Params {
    let mut p = Params::new();
    f(&mut p);
    p
}

/// Offset of CPUID entry `i`, register `r` (0 EAX .. 3 EDX).
fn cpuid_at(i: usize, r: usize) -> usize {
    256 + 16 * i + 4 * r
}

// ---------------------------------------------------------------------------
// RCX := 0 first; RDX never written
// ---------------------------------------------------------------------------

#[test]
fn rcx_is_zero_on_success_and_on_the_checks_before_td_params() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    tds.accepted("defaults", &Params::new());
    // A TDR check fails: RCX (the TDR address on input) comes back 0.
    let not_tdr = tds.td.tdcs[0];
    let pa = Params::new().write(&sim).as_u64();
    let [r8, r9, r10, r11] = UNTOUCHED;
    let (s, out) = raw(
        &sim,
        Leaf::MNG_INIT.v0(),
        [not_tdr.hpa().as_u64(), pa, r8, r9, r10, r11],
    );
    assert_eq!(s, metadata(OperandId::RCX));
    assert_eq!((out.rcx, out.rdx), (0, pa));
    assert_eq!([out.r8, out.r9, out.r10, out.r11], UNTOUCHED);
    // A TD_PARAMS address that is not 1 KiB aligned.
    let (s, out) = raw(
        &sim,
        Leaf::MNG_INIT.v0(),
        [tds.td.tdr.hpa().as_u64(), pa + 8, r8, r9, r10, r11],
    );
    assert_eq!(s, invalid(RDX));
    assert_eq!((out.rcx, out.rdx), (0, pa + 8));
    assert_eq!([out.r8, out.r9, out.r10, out.r11], UNTOUCHED);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// ATTRIBUTES (verify_td_attributes, helpers.c)
// ---------------------------------------------------------------------------

#[test]
fn attributes_allowed_bits_are_0x8000000070000001() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    for bit in [1, 7, 8, 27, 31, 32, 62] {
        tds.refused(
            &format!("ATTRIBUTES bit {bit}"),
            &params(|p| {
                p.u64(0, 1 << bit);
            }),
            invalid(OperandId::ATTRIBUTES),
            0,
        );
    }
    for (what, bits) in [
        ("DEBUG", 1 << 0),
        ("SEPT_VE_DISABLE", 1 << 28),
        ("MIGRATABLE", 1 << 29),
        ("PKS", 1 << 30),
        ("PERFMON", 1 << 63),
        ("MIGRATABLE | SEPT_VE_DISABLE | PKS", 0x7000_0000),
        (
            "DEBUG | SEPT_VE_DISABLE | PKS | PERFMON",
            0x8000_0000_5000_0001,
        ),
    ] {
        tds.accepted(
            what,
            &params(|p| {
                p.u64(0, bits);
            }),
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn a_migratable_td_is_neither_debug_nor_perfmon() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    for (what, bits) in [
        ("MIGRATABLE | DEBUG", 1 << 29 | 1),
        ("MIGRATABLE | PERFMON", 1 << 29 | 1 << 63),
    ] {
        tds.refused(
            what,
            &params(|p| {
                p.u64(0, bits);
            }),
            invalid(OperandId::ATTRIBUTES),
            0,
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn sys_rd_reports_the_attribute_and_xfam_masks_the_leaf_checks() {
    let sim = host_cpu(NativeCpu {
        xss_supported: 0x1_FD00,
        ..NativeCpu::default()
    });
    let rd = |f: tdx_types::metadata::MdFieldId| {
        let (s, out) = raw(&sim, Leaf::SYS_RD.v0(), [0, f.into_raw(), 0, 0, 0, 0]);
        ok("SYS.RD", s);
        out.r8
    };
    assert_eq!(rd(field::ATTRIBUTES_FIXED0), 0x8000_0000_7000_0001);
    assert_eq!(rd(field::ATTRIBUTES_FIXED1), 0);
    // 0x6DBE7 & (XCR0 0x602E7 | XSS 0x1FD00).
    assert_eq!(rd(field::XFAM_FIXED0), 0x6_DBE7);
    assert_eq!(rd(field::XFAM_FIXED1), 3);
    assert_eq!(rd(field::NUM_CPUID_CONFIG), 12);
}

// ---------------------------------------------------------------------------
// XFAM (check_xfam, helpers.c)
// ---------------------------------------------------------------------------

#[test]
fn xfam_bits_the_module_never_allows() {
    // Even with every feature the CPU could report.
    let sim = host_cpu(NativeCpu {
        xcr0_supported: u64::MAX,
        xss_supported: u64::MAX,
        ..NativeCpu::default()
    });
    let mut tds = Tds::new(&sim);
    for bit in [3, 4, 10, 13, 16, 19, 63] {
        tds.refused(
            &format!("XFAM bit {bit}"),
            &params(|p| {
                p.u64(8, 3 | 1 << bit);
            }),
            invalid(OperandId::XFAM),
            0,
        );
    }
    // Everything TDX_XFAM_FIXED0 (0x6DBE7) has, at once.
    tds.accepted(
        "XFAM 0x6DBE7",
        &params(|p| {
            p.u64(8, 0x6_DBE7);
        }),
    );
    sim.check_invariants().unwrap();
}

#[test]
fn xfam_needs_x87_and_sse() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    for xfam in [0, 1, 2, 0x6] {
        tds.refused(
            &format!("XFAM {xfam:#x}"),
            &params(|p| {
                p.u64(8, xfam);
            }),
            invalid(OperandId::XFAM),
            0,
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn xfam_pairing_rules() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    for (what, xfam) in [
        ("AVX-512 without AVX", 0xE3),
        ("opmask alone", 0x27),
        ("opmask and ZMM_Hi256 only", 0x67),
        ("ZMM_Hi256 and Hi16_ZMM without opmask", 0xC7),
        ("Hi16_ZMM alone", 0x87),
        ("CET user alone", 0x803),
        ("CET supervisor alone", 0x1003),
        ("AMX TILECFG alone", 0x2_0003),
        ("AMX TILEDATA alone", 0x4_0003),
    ] {
        tds.refused(
            what,
            &params(|p| {
                p.u64(8, xfam);
            }),
            invalid(OperandId::XFAM),
            0,
        );
    }
    for (what, xfam) in [
        ("AVX alone", 0x7),
        ("AVX and AVX-512", 0xE7),
        ("CET both", 0x1803),
        ("AMX both, without AVX", 0x6_0003),
        ("PT and PKRU", 0x303),
    ] {
        tds.accepted(
            what,
            &params(|p| {
                p.u64(8, xfam);
            }),
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn xfam_is_limited_by_what_the_cpu_supports() {
    // The default CPU has no ULI (14) or LBR (15) in IA32_XSS.
    let sim = host();
    let mut tds = Tds::new(&sim);
    for (what, xfam) in [("ULI", 0x4003), ("LBR", 0x8003)] {
        tds.refused(
            what,
            &params(|p| {
                p.u64(8, xfam);
            }),
            invalid(OperandId::XFAM),
            0,
        );
    }
    // A CPU with them in IA32_XSS, but without AVX-512 or AMX in XCR0.
    let sim = host_cpu(NativeCpu {
        xcr0_supported: 0x207,
        xss_supported: 0x1_D900,
        ..NativeCpu::default()
    });
    let mut tds = Tds::new(&sim);
    for (what, xfam) in [
        ("ULI", 0x4003),
        ("LBR", 0x8003),
        ("ULI, LBR, CET, PT", 0xDB03),
    ] {
        tds.accepted(
            what,
            &params(|p| {
                p.u64(8, xfam);
            }),
        );
    }
    for (what, xfam) in [("AVX-512", 0xE7), ("AMX", 0x6_0003)] {
        tds.refused(
            what,
            &params(|p| {
                p.u64(8, xfam);
            }),
            invalid(OperandId::XFAM),
            0,
        );
    }
    tds.accepted(
        "PKRU",
        &params(|p| {
            p.u64(8, 0x203);
        }),
    );
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// MAX_VCPUS, NUM_L2_VMS, TDCS pages, reserved_0, CONFIG_FLAGS, TSC
// ---------------------------------------------------------------------------

#[test]
fn max_vcpus_num_l2_vms_and_tdcs_pages() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    tds.refused(
        "MAX_VCPUS 0",
        &params(|p| {
            p.u16(16, 0);
        }),
        invalid(OperandId::MAX_VCPUS),
        0,
    );
    tds.accepted(
        "MAX_VCPUS 0xFFFF",
        &params(|p| {
            p.u16(16, 0xFFFF);
        }),
    );
    for n in [4, 0xFF] {
        tds.refused(
            &format!("NUM_L2_VMS {n}"),
            &params(|p| {
                p.u8(18, n);
            }),
            invalid(OperandId::NUM_L2_VMS),
            0,
        );
    }
    // Six TDCS pages: any L2 VM needs one more each.
    for n in 1..=3 {
        tds.refused(
            &format!("NUM_L2_VMS {n} with 6 TDCS pages"),
            &params(|p| {
                p.u8(18, n);
            }),
            TdxStatus::TDCS_NOT_ALLOCATED,
            0,
        );
    }
    let mut td = tds.fresh();
    td.add_tdcs(&sim, 3);
    let p = params(|p| {
        p.u8(18, 3);
    });
    expect(
        &sim,
        &mut td,
        &p,
        TdxStatus::SUCCESS,
        0,
        "3 L2 VMs, 9 TDCS pages",
    );
    sim.check_invariants().unwrap();
}

#[test]
fn reserved_bytes_before_the_cpuid_area() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    // reserved_0 (20..24), reserved_1 (42..80), reserved_2 (232..256).
    for off in [20, 23, 42, 60, 79, 232, 255] {
        tds.refused(
            &format!("byte {off}"),
            &params(|p| {
                p.u8(off, 0x80);
            }),
            invalid(RDX),
            0,
        );
    }
    // msr_config_ctls bits 7:1.
    for bit in 1..8 {
        tds.refused(
            &format!("msr_config_ctls bit {bit}"),
            &params(|p| {
                p.u8(19, 1 << bit);
            }),
            invalid(RDX),
            0,
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn config_flags_and_tsc_frequency() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    for bit in [3, 4, 32, 63] {
        tds.refused(
            &format!("CONFIG_FLAGS bit {bit}"),
            &params(|p| {
                p.u64(32, 1 << bit);
            }),
            invalid(OperandId::EXEC_CONTROLS),
            0,
        );
    }
    tds.accepted(
        "FLEXIBLE_PENDING_VE | NO_RBP_MOD",
        &params(|p| {
            p.u64(32, 0b110);
        }),
    );
    for f in [0, 3, 401, 0xFFFF] {
        tds.refused(
            &format!("TSC_FREQUENCY {f}"),
            &params(|p| {
                p.u16(40, f);
            }),
            invalid(OperandId::TSC_FREQUENCY),
            0,
        );
    }
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// EPTP_CONTROLS (verify_and_set_td_eptp_controls, helpers.c)
// ---------------------------------------------------------------------------

#[test]
fn eptp_reserved_fields() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    for (what, eptp) in [
        ("memory type UC", 0x18),
        ("memory type 7", 0x1f),
        ("2-level walk", 0x0e),
        ("3-level walk", 0x16),
        ("6-level walk", 0x2e),
        ("A/D", 0x5e),
        ("SSS", 0x9e),
        ("bits 11:8", 0x11e),
        ("root address", 0x1000 | 0x1e),
        ("bit 52", 1 << 52 | 0x1e),
        ("bit 63", 1 << 63 | 0x1e),
    ] {
        tds.refused(
            what,
            &params(|p| {
                p.u64(24, eptp);
            }),
            invalid(OperandId::EPTP_CONTROLS),
            0,
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn five_level_ept_needs_pml5_and_49_address_bits() {
    // No 5-level EPT on the CPU: 4 levels only, so GPAW is refused too.
    let sim = host_cpu(NativeCpu {
        ept_pml5: false,
        ..NativeCpu::default()
    });
    let mut tds = Tds::new(&sim);
    tds.refused(
        "5 levels without PML5",
        &params(|p| {
            p.u64(24, 0x26);
        }),
        invalid(OperandId::EPTP_CONTROLS),
        0,
    );
    tds.refused(
        "GPAW without PML5",
        &params(|p| {
            p.u64(24, 0x26).u64(32, 1);
        }),
        invalid(OperandId::EPTP_CONTROLS),
        0,
    );
    tds.accepted("4 levels", &Params::new());

    // PML5, but a 48-bit physical address width.
    let small = |bits| {
        host_with(Profile::tdx_1_5(), |mut d: MachineDesc| {
            d.phys_addr_bits = bits;
            d.memory = vec![(4 * GIB, 9 * GIB)];
            d
        })
    };
    let sim = small(48);
    let mut tds = Tds::new(&sim);
    tds.refused(
        "5 levels, 48-bit PA",
        &params(|p| {
            p.u64(24, 0x26);
        }),
        invalid(OperandId::EPTP_CONTROLS),
        0,
    );
    let sim = small(49);
    let mut tds = Tds::new(&sim);
    tds.accepted(
        "5 levels, 49-bit PA",
        &params(|p| {
            p.u64(24, 0x26).u64(32, 1);
        }),
    );
}

// ---------------------------------------------------------------------------
// The CPUID configuration (read_and_set_cpuid_configurations)
// ---------------------------------------------------------------------------

#[test]
fn the_profile_has_module_1_5_01s_cpuid_table() {
    // The profile takes its masks from tdx-types' table; what it adds is
    // each entry's place in the module's CPUID lookup table
    // (`cpuid_configurable[i].lookup_index`, cpuid_configurations.c).
    let p = Profile::tdx_1_5();
    assert_eq!(p.cpuid_config.len(), 12);
    let lookup: Vec<u8> = p.cpuid_config.iter().map(|c| c.lookup_index).collect();
    assert_eq!(lookup, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 59]);
    let first = &p.cpuid_config[0];
    assert_eq!((first.leaf, first.subleaf), (0x1, None));
    assert_eq!(first.config_direct, [0x0FFF_3FFF, 0x00FF_0000, 0, 0]);
    assert_eq!(first.allow_direct, [0, 0, 0x3104_4D88, 0xB844_0000]);
    let last = &p.cpuid_config[11];
    assert_eq!((last.leaf, last.subleaf), (0x23, Some(0)));
    assert_eq!(last.allow_direct, [0xF, 0, 0, 0]);
}

/// Every register of every entry: the lowest bit outside the entry's
/// CONFIG_DIRECT | ALLOW_DIRECT is refused with RCX = the entry's leaf and
/// subleaf; then all allowed bits at once are accepted.
#[test]
fn each_cpuid_entry_allows_exactly_its_bits() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    for (i, rule) in CPUID_CONFIG_1_5_01.iter().enumerate() {
        for (r, allowed) in rule.allowed().registers().into_iter().enumerate() {
            if allowed == u32::MAX {
                continue;
            }
            let bad = 1 << (!allowed).trailing_zeros();
            tds.refused(
                &format!("entry {i} register {r} bit {bad:#x}"),
                &params(|p| {
                    p.u32(cpuid_at(i, r), allowed | bad);
                }),
                cpuid_invalid(),
                rule.leaf_subleaf(),
            );
        }
    }
    // Every allowed bit of every entry, except leaf 1 EAX (the F/M/S must
    // be the CPU's for a non-migratable TD: 0 is).
    tds.accepted(
        "every allowed bit",
        &params(|p| {
            for (i, rule) in CPUID_CONFIG_1_5_01.iter().enumerate() {
                for (r, allowed) in rule.allowed().registers().into_iter().enumerate() {
                    if (i, r) != (0, 0) {
                        p.u32(cpuid_at(i, r), allowed);
                    }
                }
            }
        }),
    );
    sim.check_invariants().unwrap();
}

#[test]
fn cpuid_rcx_encodings() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    // Leaf 0xA allows nothing; leaf 0x80000008 only EBX bit 9; leaf 0x23/0
    // only EAX 3:0; leaf 7/2 only EDX bits 3 and 5.
    for (i, r, v, rcx) in [
        (7, 0, 1, 0xFFFF_FFFF_0000_000A),
        (9, 0, 1, 0xFFFF_FFFF_8000_0008),
        (9, 1, 0x100, 0xFFFF_FFFF_8000_0008),
        (11, 0, 0x10, 0x0000_0000_0000_0023),
        (10, 3, 0x1, 0x0000_0002_0000_0007),
        (2, 3, 0x4, 0x0000_0001_0000_0004),
        (4, 3, 0x8, 0x0000_0003_0000_0004),
        (0, 0, 0x1000_0000, 0xFFFF_FFFF_0000_0001),
    ] {
        tds.refused(
            &format!("entry {i} register {r} = {v:#x}"),
            &params(|p| {
                p.u32(cpuid_at(i, r), v);
            }),
            cpuid_invalid(),
            rcx,
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn cpuid_errors_come_in_entry_order() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    let mut p = Params::new();
    // Bad bits in entries 3, 9, 10 and 11 and in reserved_3.
    p.u32(cpuid_at(3, 3), 0x4)
        .u32(cpuid_at(9, 0), 1)
        .u32(cpuid_at(10, 0), 1)
        .u32(cpuid_at(11, 1), 1)
        .u8(448, 1);
    tds.refused("entry 3 first", &p, cpuid_invalid(), 0x0000_0002_0000_0004);
    p.u32(cpuid_at(3, 3), 0);
    tds.refused("then 9", &p, cpuid_invalid(), 0xFFFF_FFFF_8000_0008);
    p.u32(cpuid_at(9, 0), 0);
    tds.refused("then 10 (7/2)", &p, cpuid_invalid(), 0x0000_0002_0000_0007);
    p.u32(cpuid_at(10, 0), 0);
    tds.refused("then 11 (0x23/0)", &p, cpuid_invalid(), 0x23);
    p.u32(cpuid_at(11, 1), 0);
    tds.refused("then reserved_3", &p, invalid(RDX), 0);
    p.u8(448, 0);
    tds.accepted("all fixed", &p);
    sim.check_invariants().unwrap();
}

#[test]
fn reserved_3_is_everything_after_entry_11() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    for off in [448, 449, 700, 1023] {
        tds.refused(
            &format!("byte {off}"),
            &params(|p| {
                p.u8(off, 1);
            }),
            invalid(RDX),
            0,
        );
    }
    // Entry 11 ends at byte 447.
    tds.accepted(
        "entry 11 EAX 0xF",
        &params(|p| {
            p.u32(cpuid_at(11, 0), 0xF);
        }),
    );
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// Leaf 1 EAX: family/model/stepping (check_fms_config, cpuid_fms.c)
// ---------------------------------------------------------------------------

const LEAF1: u64 = 0xFFFF_FFFF_0000_0001;
const SPR: u32 = 0x806F8;
const EMR: u32 = 0xC06F2;
const MIGRATABLE: u64 = 1 << 29;

fn fms(attributes: u64, eax: u32) -> Params {
    params(|p| {
        p.u64(0, attributes).u32(cpuid_at(0, 0), eax);
    })
}

#[test]
fn a_non_migratable_td_has_the_cpus_fms() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    tds.accepted("0 (native)", &fms(0, 0));
    tds.accepted("the native value", &fms(0, SPR));
    for eax in [SPR - 1, 0x806F0, EMR, 0xC06F0] {
        tds.refused(&format!("{eax:#x}"), &fms(0, eax), cpuid_invalid(), LEAF1);
    }
    sim.check_invariants().unwrap();
}

#[test]
fn a_migratable_td_may_claim_an_older_cpu() {
    // On Emerald Rapids (stepping 2): EMR up to stepping 2, SPR up to 8.
    let sim = host_cpu(NativeCpu {
        fms: EMR,
        ..NativeCpu::default()
    });
    let mut tds = Tds::new(&sim);
    for eax in [0, EMR, 0xC06F0, SPR, 0x806F0] {
        tds.accepted(&format!("{eax:#x}"), &fms(MIGRATABLE, eax));
    }
    for (what, eax) in [
        ("a later EMR stepping", 0xC06F3),
        ("an SPR stepping past 8", 0x806F9),
        ("a newer model (GNR-SP)", 0xA06D0),
        ("an unknown model", 0x906A0),
        ("the processor type bits", EMR | 0x1000),
    ] {
        tds.refused(what, &fms(MIGRATABLE, eax), cpuid_invalid(), LEAF1);
    }
    // Non-migratable on the same CPU: only its own.
    tds.refused("SPR, not migratable", &fms(0, SPR), cpuid_invalid(), LEAF1);
    sim.check_invariants().unwrap();
}

#[test]
fn a_migratable_td_on_a_cpu_stepping_the_module_does_not_list() {
    // SPR stepping 9 is past the module's latest SPR stepping (8): even
    // "native" (0) fails for a migratable TD, not for a non-migratable one.
    let sim = host_cpu(NativeCpu {
        fms: 0x806F9,
        ..NativeCpu::default()
    });
    let mut tds = Tds::new(&sim);
    tds.refused(
        "native, migratable",
        &fms(MIGRATABLE, 0),
        cpuid_invalid(),
        LEAF1,
    );
    tds.accepted("SPR stepping 8, migratable", &fms(MIGRATABLE, SPR));
    tds.accepted("native, not migratable", &fms(0, 0));
    sim.check_invariants().unwrap();
}

#[test]
fn the_fms_check_comes_right_after_leaf_1s_bits() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    // A wrong F/M/S and a bad bit in entry 1: leaf 1 is reported.
    let mut p = fms(0, SPR - 1);
    p.u32(cpuid_at(1, 3), 0x4);
    tds.refused("F/M/S before entry 1", &p, cpuid_invalid(), LEAF1);
    // A bad leaf 1 EDX bit is reported before the F/M/S (same RCX).
    let mut p = fms(0, SPR - 1);
    p.u32(cpuid_at(0, 3), 1);
    tds.refused("leaf 1 EDX bit 0", &p, cpuid_invalid(), LEAF1);
    sim.check_invariants().unwrap();
}

#[test]
fn an_unknown_cpu_model_is_not_a_machine() {
    for fms in [0x906A0, SPR | 0x1000_0000, SPR | 0x4000] {
        let d = MachineDesc::new(vec![(4 * GIB, 5 * GIB)]).with_cpu(NativeCpu {
            fms,
            ..NativeCpu::default()
        });
        assert!(
            matches!(Simulator::new(d), Err(MachineError::UnknownCpuModel(f)) if f == fms),
            "{fms:#x}"
        );
    }
}

// ---------------------------------------------------------------------------
// Leaf 7/0: TSX (HLE EBX[4], RTM EBX[11])
// ---------------------------------------------------------------------------

const HLE: u32 = 1 << 4;
const RTM: u32 = 1 << 11;

fn tsx(ebx: u32) -> Params {
    params(|p| {
        p.u32(cpuid_at(5, 1), ebx);
    })
}

#[test]
fn hle_and_rtm_must_match_and_rcx_stays_0() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    tds.refused("HLE alone", &tsx(HLE), cpuid_invalid(), 0);
    tds.refused("RTM alone", &tsx(RTM), cpuid_invalid(), 0);
    tds.accepted("HLE and RTM", &tsx(HLE | RTM));
    tds.accepted("neither", &tsx(0));
    sim.check_invariants().unwrap();
}

#[test]
fn hle_and_rtm_are_compared_after_the_cpu_masks_them() {
    // A CPU that enumerates RTM but not HLE: configuring both leaves RTM
    // alone; configuring HLE alone leaves neither.
    let sim = host_cpu(NativeCpu {
        hle: false,
        ..NativeCpu::default()
    });
    let mut tds = Tds::new(&sim);
    tds.refused("both, CPU without HLE", &tsx(HLE | RTM), cpuid_invalid(), 0);
    tds.accepted("HLE alone, CPU without HLE", &tsx(HLE));
    // A CPU without TSX: anything goes.
    let sim = host_cpu(NativeCpu {
        hle: false,
        rtm: false,
        ..NativeCpu::default()
    });
    let mut tds = Tds::new(&sim);
    for ebx in [HLE, RTM, HLE | RTM] {
        tds.accepted(&format!("EBX {ebx:#x}, no TSX"), &tsx(ebx));
    }
    sim.check_invariants().unwrap();
}

#[test]
fn tsx_needs_ia32_tsx_ctrl() {
    let sim = host_cpu(NativeCpu {
        arch_capabilities: NativeCpu::default().arch_capabilities & !NativeCpu::ARCH_CAP_TSX_CTRL,
        ..NativeCpu::default()
    });
    let mut tds = Tds::new(&sim);
    let status = TdxStatus::INCORRECT_MSR_VALUE.with_operand(OperandId(0x10A));
    assert_eq!(status.raw(), 0xC000_0921_0000_010A);
    tds.refused("TSX without TSX_CTRL", &tsx(HLE | RTM), status, 0);
    tds.accepted("no TSX", &tsx(0));
    sim.check_invariants().unwrap();
}

#[test]
fn the_tsx_checks_sit_between_entries_5_and_6() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    // Entry 5's own bits first (RCX 7/0) ...
    let mut p = tsx(HLE);
    p.u32(cpuid_at(5, 0), 1);
    tds.refused("entry 5 EAX", &p, cpuid_invalid(), 0x7);
    // ... then HLE != RTM (RCX 0) before entry 6's bits.
    let mut p = tsx(HLE);
    p.u32(cpuid_at(6, 1), 1);
    tds.refused("TSX before entry 6", &p, cpuid_invalid(), 0);
    // ... and after entries 0-4.
    let mut p = tsx(HLE);
    p.u32(cpuid_at(4, 3), 0x8);
    tds.refused("entry 4 before TSX", &p, cpuid_invalid(), 0x3_0000_0004);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// IA32_ARCH_CAPABILITIES configuration (virt_msr_helpers.c), the
// migratable/L2 cross-check (helpers.c), and their place in the order
// ---------------------------------------------------------------------------

#[test]
fn arch_capabilities_config_needs_the_enable_bit_and_mask_0x1180010() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    let arch = |enable: u8, v: u64| {
        params(|p| {
            p.u8(19, enable).u64(224, v);
        })
    };
    let refused = invalid(OperandId::IA32_ARCH_CAPABILITIES_CONFIG);
    for bit in [4, 19, 20, 24] {
        tds.refused(
            &format!("bit {bit} without msr_config_ctls bit 0"),
            &arch(0, 1 << bit),
            refused,
            0,
        );
    }
    for bit in [0, 1, 2, 5, 7, 8, 25, 63] {
        tds.refused(&format!("bit {bit}"), &arch(1, 1 << bit), refused, 0);
    }
    tds.accepted("all four bits", &arch(1, 0x0118_0010));
    tds.accepted("enabled, nothing configured", &arch(1, 0));
    sim.check_invariants().unwrap();
}

#[test]
fn a_migratable_td_has_no_l2_vms_and_that_is_checked_last() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    tds.td.add_tdcs(&sim, 1);
    let mut p = params(|p| {
        p.u64(0, MIGRATABLE).u8(18, 1).u64(224, 1 << 4);
    });
    tds.refused(
        "arch caps before the cross-check",
        &p,
        invalid(OperandId::IA32_ARCH_CAPABILITIES_CONFIG),
        0,
    );
    p.u64(224, 0);
    tds.refused("migratable with an L2 VM", &p, invalid(RDX), 0);
    let mut td = tds.fresh();
    td.add_tdcs(&sim, 1);
    p.u64(0, 0);
    expect(
        &sim,
        &mut td,
        &p,
        TdxStatus::SUCCESS,
        0,
        "an L2 VM, not migratable",
    );
    sim.check_invariants().unwrap();
}

#[test]
fn the_late_checks_in_order() {
    let sim = host();
    let mut tds = Tds::new(&sim);
    let mut p = Params::new();
    // reserved_2, a CPUID bit, reserved_3, arch caps, all broken.
    p.u8(240, 1).u32(cpuid_at(8, 1), 1).u8(500, 1).u64(224, 1);
    tds.refused("reserved_2", &p, invalid(RDX), 0);
    p.u8(240, 0);
    tds.refused("CPUID entry 8", &p, cpuid_invalid(), 0xFFFF_FFFF_0000_001C);
    p.u32(cpuid_at(8, 1), 0);
    tds.refused("reserved_3", &p, invalid(RDX), 0);
    p.u8(500, 0);
    tds.refused(
        "arch caps",
        &p,
        invalid(OperandId::IA32_ARCH_CAPABILITIES_CONFIG),
        0,
    );
    p.u64(224, 0);
    tds.accepted("fixed", &p);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// The CPU facts in a trace's machine line
// ---------------------------------------------------------------------------

#[test]
fn cpu_facts_round_trip_through_the_machine_line() {
    let mut d = MachineDesc::new(vec![(4 * GIB, 5 * GIB)]);
    d.phys_addr_bits = 46;
    d.cpu = NativeCpu {
        xcr0_supported: 0x207,
        xss_supported: 0x1_D900,
        ept_pml5: false,
        fms: EMR,
        hle: false,
        rtm: true,
        arch_capabilities: 0x10_0000,
        lass: true,
    };
    let m = TraceMachine::from_desc(&d);
    let line = trace::TraceOp::Machine(m.clone()).to_string();
    assert!(line.contains("\"phys_addr_bits\":46"), "{line}");
    assert!(
        line.contains(
            "\"cpu\":{\"xcr0_supported\":\"0x207\",\"xss_supported\":\"0x1d900\",\
             \"fms\":\"0xc06f2\",\"arch_capabilities\":\"0x100000\",\
             \"ept_pml5\":false,\"hle\":false,\"lass\":true}"
        ),
        "{line}"
    );
    let t = trace::Trace::parse(format!("{line}\n").as_bytes()).unwrap();
    assert_eq!(*t.machine(), m);
    let back = t.machine_desc();
    assert_eq!(back.cpu, d.cpu);
    assert_eq!(back.phys_addr_bits, 46);
    // One fact alone; the rest default.
    let t = trace::Trace::parse(
        &b"{\"op\":\"machine\",\"memory\":[[0,1073741824]],\"cpu\":{\"rtm\":false}}\n"[..],
    )
    .unwrap();
    assert_eq!(
        t.machine().cpu,
        NativeCpu {
            rtm: false,
            ..NativeCpu::default()
        }
    );
}

#[test]
fn a_default_machine_line_has_no_cpu_facts() {
    let m = TraceMachine::new(vec![(4 * GIB, 5 * GIB)]);
    let line = trace::TraceOp::Machine(m.clone()).to_string();
    assert!(
        !line.contains("cpu") && !line.contains("phys_addr_bits"),
        "{line}"
    );
    // An old line (without them) parses to the defaults.
    let t = trace::Trace::parse(
        &b"{\"op\":\"machine\",\"memory\":[[0,1073741824]],\"profile\":\"tdx-1.5\"}\n"[..],
    )
    .unwrap();
    assert_eq!(t.machine().cpu, NativeCpu::default());
    assert_eq!(t.machine().phys_addr_bits, 52);
}

#[test]
fn malformed_cpu_facts_are_errors_naming_the_field() {
    let bad = |cpu: &str| {
        let text = format!("{{\"op\":\"machine\",\"memory\":[[0,1073741824]],{cpu}}}\n");
        trace::Trace::parse(text.as_bytes())
            .unwrap_err()
            .to_string()
    };
    assert!(bad("\"cpu\":{\"avx\":true}").contains("cpu.avx"));
    assert!(bad("\"cpu\":{\"hle\":1}").contains("cpu.hle"));
    assert!(bad("\"cpu\":{\"fms\":\"0x100000000\"}").contains("cpu.fms"));
    assert!(bad("\"cpu\":{\"xcr0_supported\":\"7\"}").contains("cpu.xcr0_supported"));
    assert!(bad("\"cpu\":[]").contains("cpu"));
    assert!(bad("\"cpu\":{\"fms\":\"0x906a0\"}").contains("CPU model"));
    assert!(bad("\"phys_addr_bits\":53").contains("physical address"));
}

#[test]
fn a_replayed_trace_keeps_the_cpu_facts() {
    // MNG.INIT with 5-level EPT is refused on a replay of a machine line
    // without 5-level EPT, as on the recording.
    let d = MachineDesc::new(vec![(4 * GIB, 9 * GIB)])
        .with_cpus(2, 2)
        .with_cpu(NativeCpu {
            ept_pml5: false,
            ..NativeCpu::default()
        });
    let line = trace::TraceOp::Machine(TraceMachine::from_desc(&d)).to_string();
    let t = trace::Trace::parse(format!("{line}\n").as_bytes()).unwrap();
    let sim = t.simulator().unwrap();
    testkit_bring_up(&sim);
    let mut tds = Tds::new(&sim);
    tds.refused(
        "5 levels",
        &params(|p| {
            p.u64(24, 0x26);
        }),
        invalid(OperandId::EPTP_CONTROLS),
        0,
    );
}

fn testkit_bring_up(sim: &Simulator) {
    tdx_sim::testkit::bring_up(sim, &layout(), Default::default());
}

#[test]
fn xfam_values_the_cpuid_area_does_not_change() {
    // CPUID values are checked against the table, not against XFAM: AVX-512
    // feature bits of leaf 7/0 may be configured with XFAM x87|SSE (the
    // module masks them afterwards, without an error).
    let sim = host();
    let mut tds = Tds::new(&sim);
    let allowed = CPUID_CONFIG_1_5_01[5].allow_direct;
    assert_ne!(allowed, CpuidValues::ZERO);
    tds.accepted(
        "leaf 7/0 EBX AVX-512F with XFAM 3",
        &params(|p| {
            p.u32(cpuid_at(5, 1), 1 << 16);
        }),
    );
}

// ---------------------------------------------------------------------------
// The host's check (tdx_api::td::check_params) against the module
// ---------------------------------------------------------------------------

/// The `SysInfo` fields `check_params` reads, from the module's metadata.
fn sysinfo_of(sim: &Simulator) -> tdx_api::SysInfo {
    let rd = |f: tdx_types::metadata::MdFieldId| {
        let (s, out) = raw(sim, Leaf::SYS_RD.v0(), [0, f.into_raw(), 0, 0, 0, 0]);
        ok("SYS.RD", s);
        out.r8
    };
    let n = rd(field::NUM_CPUID_CONFIG) as u32;
    tdx_api::SysInfo {
        version: None,
        features0: Default::default(),
        max_tdmrs: 64,
        max_reserved_per_tdmr: 16,
        pamt_entry_size: [16; 3],
        tdr_base_size: 4096,
        tdcs_base_size: 6 * 4096,
        tdvps_base_size: 6 * 4096,
        attributes_fixed: (rd(field::ATTRIBUTES_FIXED0), rd(field::ATTRIBUTES_FIXED1)),
        xfam_fixed: (rd(field::XFAM_FIXED0), rd(field::XFAM_FIXED1)),
        max_vcpus_per_td: sim.profile().max_vcpus_per_td,
        cpuid_config: (0..n)
            .map(|i| (rd(field::cpuid_config_leaf(i).unwrap()), [0, 0]))
            .collect(),
        cmrs: None,
        memory_pool_required_pages: 0,
        ext_required: false,
        dpamt_bitmap_bits: None,
    }
}

/// The status (and RCX) TDH.MNG.INIT answers for what the host refused.
fn module_view(e: &tdx_api::td::ParamsError) -> (TdxStatus, u64) {
    use tdx_api::td::ParamsError as P;
    let i = |o| (invalid(o), 0);
    match *e {
        P::Attributes(_) | P::MigratableAttributes(_) => i(OperandId::ATTRIBUTES),
        P::Xfam(_) | P::XfamCombination { .. } => i(OperandId::XFAM),
        P::MaxVcpus { .. } => i(OperandId::MAX_VCPUS),
        P::ConfigFlags(_) => i(OperandId::EXEC_CONTROLS),
        P::Eptp(_) => i(OperandId::EPTP_CONTROLS),
        P::TscFrequency(_) => i(OperandId::TSC_FREQUENCY),
        P::Reserved { .. } | P::CpuidEntryUnused { .. } => i(RDX),
        P::CpuidBits { leaf, subleaf, .. } => {
            (cpuid_invalid(), u64::from(leaf) | u64::from(subleaf) << 32)
        }
        P::ArchCapabilitiesNotEnabled(_) | P::ArchCapabilities { .. } => {
            i(OperandId::IA32_ARCH_CAPABILITIES_CONFIG)
        }
        P::CpuidTopology { .. } => (LEAF_1F_BAD, 0),
        P::L2Vms(_) => unreachable!("the cases have no L2 VMs"),
        // A new refusal needs its module status here.
        other => panic!("no module status for {other:?}"),
    }
}

/// Random TD_PARAMS around the valid ones: the host refuses a case only
/// when the module does, with the status and RCX its error documents; a
/// case the host passes, the module accepts unless it breaks a rule that
/// depends on the CPU (leaf 1's F/M/S, TSX), which the host leaves to it.
#[test]
fn the_host_check_agrees_with_the_module() {
    differential(Profile::tdx_1_5());
}

/// [`the_host_check_agrees_with_the_module`] on module 1.5.05: its 18
/// CPUID entries in its order, and the CPUID(0x1F) topology check.
#[test]
fn the_host_check_agrees_with_module_1_5_05() {
    differential(Profile::tdx_1_5_05());
}

/// 600 random cases against `profile`'s module.
fn differential(profile: Profile) {
    use tdx_types::abi::{CPUID_CONFIG_1_5_05, CPUID_CONFIG_ORDER_1_5_05};
    let (table, order): (&[tdx_types::abi::CpuidConfigRule], Vec<usize>) =
        if profile.cpuid_config.len() == 18 {
            (&CPUID_CONFIG_1_5_05, CPUID_CONFIG_ORDER_1_5_05.to_vec())
        } else {
            (&CPUID_CONFIG_1_5_01, (0..12).collect())
        };
    let n = table.len();
    let tsx_rcx = if profile.hle_rtm_error_sets_rcx { 7 } else { 0 };
    let host = || host_with(profile.clone(), |d| d);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut refused_by_host, mut accepted, mut left_to_module) = (0, 0, 0);
    let mut topology_refused = 0;
    let mut sim = host();
    let mut info = sysinfo_of(&sim);
    let mut tds = Tds::new(&sim);
    for case in 0..600 {
        let mut p = Params::new();
        for _ in 0..=(next() % 3) {
            let r = next();
            match r % 11 {
                0 => {
                    let bits = [1u64, 1 << 28, 1 << 29, 1 << 30, 1 << 31, 1 << 63, 1 << 5];
                    let a = bits[(r >> 8) as usize % bits.len()]
                        | bits[(r >> 16) as usize % bits.len()];
                    p.u64(0, a);
                }
                1 => {
                    let x = [
                        3u64, 7, 0xE7, 0xE3, 0x67, 0x1803, 0x803, 0x6_0003, 0x2_0003, 0x4003,
                        0x303, 1,
                    ];
                    p.u64(8, x[(r >> 8) as usize % x.len()]);
                }
                2 | 3 => {
                    // A CPUID entry: mostly allowed bits, sometimes any.
                    let i = (r >> 8) as usize % n;
                    let reg = (r >> 16) as usize % 4;
                    let allowed = table[i].allowed().registers()[reg];
                    let v = (r >> 32) as u32;
                    let v = if r % 10 == 2 { v & allowed } else { v };
                    if (i, reg) != (0, 0) || r & 1 << 40 == 0 {
                        p.u32(cpuid_at(i, reg), v);
                    }
                }
                4 => {
                    p.u8(19, (r >> 8) as u8 & 3)
                        .u64(224, (r >> 16) & 0x0118_0011);
                }
                5 => {
                    let e = [0x1e, 0x26, 0x5e, 0x16];
                    p.u64(24, e[(r >> 8) as usize % e.len()])
                        .u64(32, (r >> 16) & 0xF);
                }
                6 => {
                    p.u16(40, (r >> 8) as u16 % 450)
                        .u16(16, (r >> 24) as u16 % 3);
                }
                7 => {
                    // Any byte anywhere.
                    p.u8((r >> 8) as usize % 1024, (r >> 20) as u8 | 1);
                }
                8 => {
                    // Leaf 7/0 TSX bits.
                    p.u32(
                        cpuid_at(5, 1),
                        [0, 1 << 4, 1 << 11, 1 << 4 | 1 << 11][(r >> 8) as usize % 4],
                    );
                }
                10 => {
                    // A CPUID(0x1F) topology (entries 12-17 of 1.5.05;
                    // reserved bytes on 1.5.01): levels of random type,
                    // often a well-formed SMT, CORE.
                    if r >> 8 & 1 == 0 {
                        p.u32(cpuid_at(12, 2), level(0, 1))
                            .u32(cpuid_at(13, 2), level(1, 2));
                    } else {
                        for sub in 0..(r >> 9) as usize % 4 {
                            let kind = [0, 1, 2, 3, 6][(r >> (12 + 3 * sub)) as usize % 5];
                            p.u32(cpuid_at(12 + sub, 0), (r >> 30) as u32 & 0x1F)
                                .u32(cpuid_at(12 + sub, 2), level(sub as u32, kind));
                        }
                    }
                }
                _ => {
                    // Leaf 1 F/M/S.
                    let f = [0, SPR, SPR - 1, EMR, 0x806F0];
                    p.u32(cpuid_at(0, 0), f[(r >> 8) as usize % f.len()]);
                }
            }
        }
        let params =
            <tdx_types::abi::TdParams as zerocopy::FromBytes>::read_from_bytes(&p.0).unwrap();
        let host_says = tdx_api::td::check_params(&info, &params);
        let what = format!("case {case}: {host_says:?}");
        // The CPU-dependent rule the case breaks, if any, with its place in
        // the module's CPUID walk (after entry 0's bits: leaf 1's F/M/S;
        // after entry 5's: TSX) and what the module answers.
        let fms = u32::from_le_bytes(p.0[256..260].try_into().unwrap());
        let ebx = u32::from_le_bytes(p.0[cpuid_at(5, 1)..cpuid_at(5, 1) + 4].try_into().unwrap());
        let migratable = p.0[3] & 0x20 != 0;
        let fms_ok = fms == 0 || fms == SPR || (migratable && fms < SPR && fms & !0xF == 0x806F0);
        let cpu_rule = if !fms_ok {
            Some((0, cpuid_invalid(), LEAF1))
        } else if (ebx >> 4 & 1) != (ebx >> 11 & 1) {
            Some((5, cpuid_invalid(), tsx_rcx))
        } else {
            None
        };
        match host_says {
            Err(e) => {
                use tdx_api::td::ParamsError as P;
                // Where the host's error sits in the module's order: before
                // the CPUID walk, at an entry's bits, or after the walk.
                topology_refused += usize::from(matches!(e, P::CpuidTopology { .. }));
                let at = match e {
                    P::CpuidBits { index, .. } => {
                        order.iter().position(|&o| o == index).unwrap() as i64
                    }
                    P::CpuidTopology { .. }
                    | P::CpuidEntryUnused { .. }
                    | P::ArchCapabilities { .. }
                    | P::ArchCapabilitiesNotEnabled(_) => n as i64,
                    _ => -1,
                };
                let (status, rcx) = match cpu_rule {
                    Some((pos, s, rcx)) if pos < at => {
                        left_to_module += 1;
                        (s, rcx)
                    }
                    _ => module_view(&e),
                };
                tds.refused(&what, &p, status, rcx);
                refused_by_host += 1;
            }
            Ok(_) => {
                if let Some((_, status, rcx)) = cpu_rule {
                    tds.refused(&what, &p, status, rcx);
                    left_to_module += 1;
                } else {
                    tds.accepted(&what, &p);
                    accepted += 1;
                    if accepted % 25 == 0 {
                        // Out of HKIDs soon: a new host.
                        sim = host();
                        info = sysinfo_of(&sim);
                        tds = Tds::new(&sim);
                    }
                }
            }
        }
    }
    assert!(refused_by_host > 200, "{refused_by_host}");
    assert!(accepted > 50, "{accepted}");
    assert!(left_to_module > 10, "{left_to_module}");
    if profile.cpuid_1f_topology {
        assert!(topology_refused > 5, "{topology_refused}");
    }
}

// ---------------------------------------------------------------------------
// Module 1.5.05's CPUID rules (the `TDX 1.5.05` source: 18 configurable
// leaves, `include/auto_gen/cpuid_configurations.c`; `check_cpuid_1f`,
// `src/common/helpers/helpers.c`; `tdh_mng_init.c`)
// ---------------------------------------------------------------------------

/// A host running module 1.5.05.
fn host_1_5_05() -> Simulator {
    host_with(Profile::tdx_1_5_05(), |d| d)
}

/// `TDX_CPUID_LEAF_1F_FORMAT_UNRECOGNIZED`.
const LEAF_1F_BAD: TdxStatus = TdxStatus::CPUID_LEAF_1F_FORMAT_UNRECOGNIZED;

/// CPUID(0x1F) sub-leaf `sub` is TD_PARAMS entry 12 + `sub` on 1.5.05.
fn leaf_1f(p: &mut Params, sub: usize, eax: u32, ebx: u32, ecx: u32) {
    p.u32(cpuid_at(12 + sub, 0), eax)
        .u32(cpuid_at(12 + sub, 1), ebx)
        .u32(cpuid_at(12 + sub, 2), ecx);
}

/// A CPUID(0x1F) level in ECX: level number in 7:0, type in 15:8 (SMT 1,
/// CORE 2, MODULE 3, TILE 4, DIE 5).
fn level(number: u32, kind: u32) -> u32 {
    number | kind << 8
}

/// Two threads per core, eight cores: SMT then CORE, then INVALID.
fn topology(p: &mut Params) {
    leaf_1f(p, 0, 1, 2, level(0, 1));
    leaf_1f(p, 1, 4, 16, level(1, 2));
}

#[test]
fn module_1_5_05_configures_18_cpuid_leaves() {
    let p = Profile::tdx_1_5_05();
    let old = Profile::tdx_1_5();
    assert_eq!(p.cpuid_config.len(), 18);
    // Entries 0-11 are 1.5.01's but leaf 7/1, which allows EAX bit 26 and
    // EDX bits 4, 5 and 10 as well.
    for (i, (c, o)) in p.cpuid_config.iter().zip(&old.cpuid_config).enumerate() {
        assert_eq!(
            (c.leaf_subleaf(), c.config_direct, c.lookup_index),
            (o.leaf_subleaf(), o.config_direct, o.lookup_index),
            "entry {i}"
        );
        if i != 6 {
            assert_eq!(c.allow_direct, o.allow_direct, "entry {i}");
        }
    }
    assert_eq!(p.cpuid_config[6].allow_direct, [0x0400_1D30, 0, 0, 0x430]);
    // Entries 12-17: CPUID(0x1F) sub-leaves 0-5, lookup indices 46-51.
    for (sub, c) in p.cpuid_config[12..].iter().enumerate() {
        assert_eq!(c.leaf_subleaf(), 0x1F | (sub as u64) << 32);
        assert_eq!(c.config_direct, [0x1F, 0xFFFF, 0xFFFF, 0]);
        assert_eq!(c.allow_direct, [0; 4]);
        assert_eq!(c.lookup_index, 46 + sub as u8);
    }
    // The library's check order (tdx-types) is the simulator's lookup
    // order.
    let mut by_lookup: Vec<usize> = (0..18).collect();
    by_lookup.sort_by_key(|&i| p.cpuid_config[i].lookup_index);
    assert_eq!(by_lookup, tdx_types::abi::CPUID_CONFIG_ORDER_1_5_05);
    // The module reports them.
    let sim = host_1_5_05();
    let info = sysinfo_of(&sim);
    assert_eq!(info.cpuid_config.len(), 18);
    assert_eq!(info.cpuid_config[17].0, 0x5_0000_001F);
}

/// Every register of every 1.5.05 entry: the lowest bit outside its masks
/// is refused with RCX = its leaf and subleaf; then every allowed bit of
/// entries 0-11 with a valid topology is accepted.
#[test]
fn module_1_5_05_each_cpuid_entry_allows_exactly_its_bits() {
    let sim = host_1_5_05();
    let mut tds = Tds::new(&sim);
    let table = Profile::tdx_1_5_05().cpuid_config;
    for (i, c) in table.iter().enumerate() {
        for (r, allowed) in c.mask().into_iter().enumerate() {
            if allowed == u32::MAX {
                continue;
            }
            let bad = 1 << (!allowed).trailing_zeros();
            tds.refused(
                &format!("1.5.05 entry {i} register {r} bit {bad:#x}"),
                &params(|p| {
                    p.u32(cpuid_at(i, r), allowed | bad);
                }),
                cpuid_invalid(),
                c.leaf_subleaf(),
            );
        }
    }
    tds.accepted(
        "every allowed bit of entries 0-11, a topology",
        &params(|p| {
            for (i, c) in table[..12].iter().enumerate() {
                for (r, allowed) in c.mask().into_iter().enumerate() {
                    if (i, r) != (0, 0) {
                        p.u32(cpuid_at(i, r), allowed);
                    }
                }
            }
            topology(p);
        }),
    );
    sim.check_invariants().unwrap();
}

/// Leaf 7/1's new bits: accepted by 1.5.05, refused by 1.5.01 (RCX 7/1).
#[test]
fn leaf_7_1_allows_more_on_module_1_5_05() {
    let new = host_1_5_05();
    let old = host();
    let (mut tds_new, mut tds_old) = (Tds::new(&new), Tds::new(&old));
    for (r, v) in [(0, 1u32 << 26), (3, 1 << 4), (3, 1 << 5), (3, 1 << 10)] {
        let p = params(|p| {
            p.u32(cpuid_at(6, r), v);
        });
        let what = format!("7/1 register {r} = {v:#x}");
        tds_new.accepted(&what, &p);
        tds_old.refused(&what, &p, cpuid_invalid(), 0x1_0000_0007);
    }
    // EDX bit 0 is allowed by neither.
    let p = params(|p| {
        p.u32(cpuid_at(6, 3), 1);
    });
    tds_new.refused("7/1 EDX bit 0", &p, cpuid_invalid(), 0x1_0000_0007);
    new.check_invariants().unwrap();
    old.check_invariants().unwrap();
}

/// Bytes 448..544 are the 0x1F entries on 1.5.05 (reserved on 1.5.01);
/// reserved_3 starts at byte 544.
#[test]
fn reserved_3_starts_after_entry_17_on_module_1_5_05() {
    let sim = host_1_5_05();
    let mut tds = Tds::new(&sim);
    tds.accepted("a topology in entries 12-13", &params(topology));
    for off in [544, 545, 700, 1023] {
        tds.refused(
            &format!("byte {off}"),
            &params(|p| {
                p.u8(off, 1);
            }),
            invalid(RDX),
            0,
        );
    }
    // Byte 543 is 0x1F/5's EDX, where nothing is configurable.
    tds.refused(
        "byte 543",
        &params(|p| {
            p.u8(543, 1);
        }),
        cpuid_invalid(),
        0x5_0000_001F,
    );
    sim.check_invariants().unwrap();
}

/// The module walks its CPUID lookup table: entry 10 (7/2, index 14), then
/// the 0x1F entries 12-17 (46-51), then entry 11 (0x23, 59); then the
/// topology check, then reserved_3.
#[test]
fn module_1_5_05_checks_cpuid_entries_in_lookup_order() {
    let sim = host_1_5_05();
    let mut tds = Tds::new(&sim);
    let mut p = Params::new();
    p.u32(cpuid_at(10, 0), 1)
        .u32(cpuid_at(13, 3), 1)
        .u32(cpuid_at(11, 1), 1)
        .u32(cpuid_at(14, 2), level(0, 1))
        .u8(600, 1);
    tds.refused("7/2 first", &p, cpuid_invalid(), 0x2_0000_0007);
    p.u32(cpuid_at(10, 0), 0);
    tds.refused("then 0x1F/1", &p, cpuid_invalid(), 0x1_0000_001F);
    p.u32(cpuid_at(13, 3), 0);
    tds.refused("then 0x23/0", &p, cpuid_invalid(), 0x23);
    p.u32(cpuid_at(11, 1), 0);
    tds.refused("then the topology", &p, LEAF_1F_BAD, 0);
    p.u32(cpuid_at(14, 2), 0);
    tds.refused("then reserved_3", &p, invalid(RDX), 0);
    p.u8(600, 0);
    tds.accepted("all fixed", &p);
    sim.check_invariants().unwrap();
}

/// One CPUID(0x1F) sub-leaf: EAX, EBX, ECX.
type Sub = (u32, u32, u32);

/// `check_cpuid_1f`: each topology with the status and RCX 0.
#[test]
fn module_1_5_05_checks_the_cpuid_1f_topology() {
    let sim = host_1_5_05();
    let mut tds = Tds::new(&sim);
    let with = |subs: &[Sub]| {
        params(|p| {
            for (s, &(eax, ebx, ecx)) in subs.iter().enumerate() {
                leaf_1f(p, s, eax, ebx, ecx);
            }
        })
    };
    let good: &[(&str, Vec<Sub>)] = &[
        ("all zero: the CPU's own topology", vec![]),
        ("SMT, CORE", vec![(1, 2, level(0, 1)), (4, 16, level(1, 2))]),
        ("CORE alone", vec![(3, 8, level(0, 2))]),
        (
            "SMT, CORE, MODULE, TILE, DIE",
            vec![
                (1, 2, level(0, 1)),
                (4, 16, level(1, 2)),
                (5, 32, level(2, 3)),
                (6, 64, level(3, 4)),
                (7, 128, level(4, 5)),
            ],
        ),
        (
            "SMT, CORE, INVALID, SMT: a level after INVALID starts again",
            vec![
                (1, 2, level(0, 1)),
                (4, 16, level(1, 2)),
                (0, 0, 0),
                (1, 2, level(3, 1)),
            ],
        ),
        (
            "SMT, CORE, INVALID with EAX/EBX set",
            vec![(1, 2, level(0, 1)), (4, 16, level(1, 2)), (7, 9, 3)],
        ),
    ];
    for (what, subs) in good {
        tds.accepted(what, &with(subs));
    }
    let bad: &[(&str, Vec<Sub>)] = &[
        (
            "sub-leaf 0 zero, sub-leaf 2 not",
            vec![(0, 0, 0), (0, 0, 0), (1, 2, level(0, 1))],
        ),
        ("sub-leaf 0 INVALID but not zero", vec![(1, 0, 0)]),
        ("SMT alone (no CORE)", vec![(1, 2, level(0, 1))]),
        ("SMT, SMT", vec![(1, 2, level(0, 1)), (2, 4, level(1, 1))]),
        ("CORE, SMT", vec![(3, 8, level(0, 2)), (4, 16, level(1, 1))]),
        (
            "level type 6",
            vec![(3, 8, level(0, 2)), (4, 16, level(1, 6))],
        ),
        ("level type 0xFF", vec![(3, 8, level(0, 0xFF))]),
    ];
    for (what, subs) in bad {
        tds.refused(what, &with(subs), LEAF_1F_BAD, 0);
    }
    sim.check_invariants().unwrap();
}

/// 1.5.05 reports the leaf (7/0) in RCX when HLE ≠ RTM; the TSX_CTRL
/// error still leaves RCX 0.
#[test]
fn module_1_5_05_reports_leaf_7_on_hle_rtm_mismatch() {
    let sim = host_1_5_05();
    let mut tds = Tds::new(&sim);
    tds.refused("HLE alone", &tsx(HLE), cpuid_invalid(), 0x7);
    tds.refused("RTM alone", &tsx(RTM), cpuid_invalid(), 0x7);
    tds.accepted("HLE and RTM", &tsx(HLE | RTM));
    let sim = host_with(Profile::tdx_1_5_05(), |d| {
        d.with_cpu(NativeCpu {
            arch_capabilities: NativeCpu::default().arch_capabilities
                & !NativeCpu::ARCH_CAP_TSX_CTRL,
            ..NativeCpu::default()
        })
    });
    let mut tds = Tds::new(&sim);
    let status = TdxStatus::INCORRECT_MSR_VALUE.with_operand(OperandId(0x10A));
    tds.refused("TSX without TSX_CTRL", &tsx(HLE | RTM), status, 0);
    sim.check_invariants().unwrap();
}

/// ATTRIBUTES.LASS (bit 27): module 1.5.05 allows and reports it only on a
/// CPU with LASS (`tdh_sys_init.c`); module 1.5.01 never.
#[test]
fn lass_is_a_1_5_05_attribute_on_a_cpu_with_lass() {
    const LASS: u64 = 1 << 27;
    let lass_cpu = NativeCpu {
        lass: true,
        ..NativeCpu::default()
    };
    let sys_fixed0 = |sim: &Simulator| {
        let (s, out) = raw(
            sim,
            Leaf::SYS_RD.v0(),
            [0, field::ATTRIBUTES_FIXED0.into_raw(), 0, 0, 0, 0],
        );
        ok("SYS.RD", s);
        out.r8
    };
    let lass = params(|p| {
        p.u64(0, LASS);
    });
    for (profile, cpu, allowed) in [
        (Profile::tdx_1_5_05(), NativeCpu::default(), false),
        (Profile::tdx_1_5_05(), lass_cpu, true),
        (Profile::tdx_1_5(), lass_cpu, false),
    ] {
        let what = format!("{} lass {}", profile.name, cpu.lass);
        let sim = host_with(profile, |d| d.with_cpu(cpu));
        let fixed0 = 0x8000_0000_7000_0001 | if allowed { LASS } else { 0 };
        assert_eq!(sys_fixed0(&sim), fixed0, "{what}");
        let mut tds = Tds::new(&sim);
        if allowed {
            tds.accepted(&what, &lass);
        } else {
            tds.refused(&what, &lass, invalid(OperandId::ATTRIBUTES), 0);
        }
        sim.check_invariants().unwrap();
    }
}
