//! The guest model's instructions (CPUID, RDMSR/WRMSR, the instructions
//! that always #VE), VE_INFO with TDG.VP.VEINFO.GET and the #DF of a
//! second #VE, the interruptible 2M TDG.MEM.PAGE.ACCEPT, and TDH.VP.ENTER's
//! host-MSR checks, at the raw-leaf level. Assertions inside a guest
//! program fail the test through the entry that runs them.

// UNSAFETY: raw SEAMCALLs with chosen registers, on the simulator only.
#![allow(unsafe_code)]

mod td_support;

use td_support::*;
use tdx_sim::{
    Exception, Guest, HostMsr, Instruction, NativeCpu, Simulator, VirtualizationException,
};
use tdx_sys::{RegShape, Seamcall, SeamcallArgs};
use tdx_types::{Leaf, OperandId, Pfn, TdxStatus, exit::subfunction, regs::SeptState};

/// The shared bit of a 4-level (GPAW 48) TD.
const SHARED: u64 = 1 << 47;
/// TD_PARAMS offset of CPUID configuration entry 0 (leaf 1: EAX, EBX, ECX,
/// EDX).
const CPUID_LEAF1: usize = 256;
/// The default host IA32_MISC_ENABLE ([`HostMsr::MiscEnable`]).
const MISC_ENABLE: u64 = 0x0085_0089;

/// A runnable TD with `vcpus` vCPUs initialized on [`VCPU_LP`], TD_PARAMS
/// `p`.
fn runnable_with(sim: &Simulator, p: &Params, vcpus: usize) -> Td {
    runnable_hkid(sim, td_hkid(sim), p, vcpus)
}

fn runnable_hkid(sim: &Simulator, hkid: u16, p: &Params, vcpus: usize) -> Td {
    let mut td = Td::build_with(sim, hkid, Stage::TdcsAdded);
    td.init(sim, p);
    for _ in 0..vcpus {
        td.add_vcpu(sim, VCPU_LP);
    }
    ok("MR.FINALIZE", mr_finalize(sim, td.tdr));
    td
}

fn runnable(sim: &Simulator) -> Td {
    runnable_with(sim, &Params::new(), 1)
}

/// TDH.VP.ENTER of `tdvpr` on `lp` with RCX flags `flags` and the host's
/// registers `a`: RAX and the registers after.
fn enter_flags(
    sim: &Simulator,
    lp: u32,
    tdvpr: Pfn,
    flags: u64,
    a: SeamcallArgs,
) -> (u64, SeamcallArgs) {
    on(sim, lp, || {
        let mut a = a;
        a.rcx = tdvpr.hpa().as_u64() | flags;
        // SAFETY: the simulator's memory is simulated.
        let s = unsafe { sim.seamcall(Leaf::VP_ENTER.v(0).rax(), &mut a, RegShape::SavedRet) };
        (s.raw(), a)
    })
}

fn enter(sim: &Simulator, tdvpr: Pfn) -> (u64, SeamcallArgs) {
    enter_flags(sim, VCPU_LP, tdvpr, 0, SeamcallArgs::default())
}

/// An entry that fails with `want`, changing no register but RAX.
#[track_caller]
fn enter_fails(sim: &Simulator, tdvpr: Pfn, flags: u64, want: TdxStatus) {
    let marked = SeamcallArgs {
        rdx: 0xD0,
        r8: 0x80,
        r12: 0x120,
        rbx: 0xB0,
        ..SeamcallArgs::default()
    };
    let (rax, a) = enter_flags(sim, VCPU_LP, tdvpr, flags, marked);
    assert_eq!(TdxStatus::from_raw(rax), want);
    let mut expect = marked;
    expect.rcx = tdvpr.hpa().as_u64() | flags;
    assert_eq!(a, expect, "a failed entry changes only RAX");
}

/// The GHCI HLT exit of a halting guest.
fn halt_regs() -> SeamcallArgs {
    SeamcallArgs {
        rcx: 0x1C00,
        r11: subfunction::HLT,
        ..SeamcallArgs::default()
    }
}

/// The external-interrupt exit of a kick: RAX 1, R9 the interruption
/// information (valid, vector 0xFD).
fn kick_regs() -> SeamcallArgs {
    SeamcallArgs {
        r9: 0x8000_00FD,
        ..SeamcallArgs::default()
    }
}

/// The VE_INFO of an instruction's #VE.
fn ve(reason: u32, qualification: u64, len: u32) -> VirtualizationException {
    VirtualizationException {
        reason,
        qualification,
        instruction_length: len,
        ..VirtualizationException::default()
    }
}

/// The #VE handler's first step: VE_INFO as the #VE had it, then free.
#[track_caller]
fn handled(g: &mut Guest, e: Exception) {
    let Exception::Ve(want) = e else {
        panic!("not a #VE: {e:?}")
    };
    assert_eq!(g.veinfo_get(), Ok(want));
    assert_eq!(g.veinfo_get(), Err(TdxStatus::NO_VALID_VE_INFO));
}

// ---------------------------------------------------------------------------
// CPUID
// ---------------------------------------------------------------------------

#[test]
fn cpuid_answers_from_the_tds_values_with_the_dynamic_fixups() {
    let sim = host();
    let mut p = Params::new();
    // Leaf 1: EBX[23:16] (CONFIG_DIRECT) 4 logical processors; ECX
    // TSC_DEADLINE (bit 24, ALLOW_DIRECT); EDX nothing.
    p.u32(CPUID_LEAF1 + 4, 0x0004_0000)
        .u32(CPUID_LEAF1 + 8, 1 << 24);
    let td = runnable_with(&sim, &p, 2);
    let fms = NativeCpu::default().fms;
    for (i, v) in td.vcpus.iter().enumerate() {
        let index = i as u32;
        sim.set_guest(v.tdvpr, move |g: &mut Guest| {
            // Leaf 0: max leaf 0x23, "GenuineIntel".
            assert_eq!(
                g.cpuid(0, 0),
                Ok([0x23, 0x756E_6547, 0x6C65_746E, 0x4965_6E69])
            );
            // Leaf 1: the CPU's F/M/S (configured 0), EBX[31:24] =
            // VCPU_INDEX, ECX FIXED1 bit 31 and the configured TSC
            // deadline, EDX FIXED1 bit 9.
            assert_eq!(
                g.cpuid(1, 0),
                Ok([fms, index << 24 | 0x0004_0000, 1 << 31 | 1 << 24, 1 << 9])
            );
            // Leaf 1 has no sub-leaves: any ECX reads the same.
            assert_eq!(g.cpuid(1, 7).map(|r| r[1] >> 24), Ok(index));
            assert_eq!(g.cpuid(0x8000_0000, 0), Ok([0x8000_0008, 0, 0, 0]));
            // SYSCALL: the guest is in 64-bit mode.
            assert_eq!(g.cpuid(0x8000_0001, 0), Ok([0, 0, 0, 1 << 11]));
            // Above the last base leaf: read as leaf 0x23, sub-leaf kept.
            assert_eq!(g.cpuid(0x30, 0), g.cpuid(0x23, 0));
            assert!(g.cpuid(0x30, 0).is_ok());
            // #VE (reason 10, CPUID's length 2): the hypervisor range, a
            // leaf the table lacks, a faulting leaf, a sub-leaf the table
            // lacks (also after the clamp).
            for (leaf, subleaf) in [
                (0x4000_0000, 0),
                (0x2, 0),
                (0xB, 0),
                (0x6, 0),
                (0x1F, 0),
                (0x8000_0006, 0),
                (0x4, 5),
                (0x30, 4),
            ] {
                let e = g.cpuid(leaf, subleaf).unwrap_err();
                assert_eq!(
                    e,
                    Exception::Ve(ve(10, 0, 2)),
                    "CPUID({leaf:#x}, {subleaf})"
                );
                handled(g, e);
            }
            g.halt();
        });
        assert_eq!(enter(&sim, v.tdvpr), (77, halt_regs()));
    }
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn cpuidve_set_makes_every_supervisor_cpuid_a_ve() {
    let sim = host();
    let td = runnable(&sim);
    let v = td.vcpus[0].tdvpr;
    sim.set_guest(v, |g: &mut Guest| {
        // Reserved bits: refused, nothing changes.
        assert_eq!(
            g.cpuidve_set(1 | 1 << 2),
            e(TdxStatus::OPERAND_INVALID, OperandId::RCX)
        );
        assert!(g.cpuid(0, 0).is_ok());
        // User mode only: the guest model's supervisor CPUIDs go on.
        assert_eq!(g.cpuidve_set(2), TdxStatus::SUCCESS);
        assert!(g.cpuid(0, 0).is_ok());
        assert_eq!(g.cpuidve_set(1), TdxStatus::SUCCESS);
        let e = g.cpuid(0, 0).unwrap_err();
        assert_eq!(e, Exception::Ve(ve(10, 0, 2)));
        handled(g, e);
        assert_eq!(g.cpuidve_set(0), TdxStatus::SUCCESS);
        assert!(g.cpuid(0, 0).is_ok());
        assert_eq!(g.cpuidve_set(3), TdxStatus::SUCCESS);
        g.halt();
    });
    assert_eq!(enter(&sim, v), (77, halt_regs()));
    // The host reads the flags with TDH.VP.RD (TDVPS CPUID_SUPERVISOR_VE
    // and CPUID_USER_VE).
    for id in [0xA020_0000_0000_0007, 0xA020_0000_0000_0008] {
        let (st, a) = on(&sim, VCPU_LP, || {
            raw(&sim, Leaf::VP_RD.v0(), [v.hpa().as_u64(), id, 0, 0, 0, 0])
        });
        assert_eq!((st, a.r8), (TdxStatus::SUCCESS, 1), "{id:#x}");
    }
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// VE_INFO, TDG.VP.VEINFO.GET, #DF
// ---------------------------------------------------------------------------

#[test]
fn instructions_ve_and_a_second_ve_before_veinfo_get_is_a_double_fault() {
    let sim = host();
    let mut td = runnable(&sim);
    let v = td.vcpus[0].tdvpr;
    let gpa = 0x20_3000;
    td.aug(&sim, gpa, 0);
    sim.map_shared(td.tdr, SHARED | 0x5000, Some(tdx_sim::SharedMapping::Mmio));
    let out = Instruction::Io {
        port: 0x3F8,
        size: 1,
        input: false,
    };
    sim.set_guest(v, move |g: &mut Guest| {
        // Nothing delivered yet.
        assert_eq!(g.veinfo_get(), Err(TdxStatus::NO_VALID_VE_INFO));
        let hlt = g.instruction(Instruction::Hlt);
        assert_eq!(hlt, Exception::Ve(ve(12, 0, 1)));
        // VE_INFO still valid: every #VE the module injects is a #DF, and
        // VE_INFO keeps the HLT's.
        assert_eq!(g.instruction(out), Exception::DoubleFault);
        assert_eq!(g.cpuid(0x4000_0000, 0), Err(Exception::DoubleFault));
        assert_eq!(g.rdmsr(0x1B), Err(Exception::DoubleFault));
        // A PENDING page (the module's #VE) and a TDCALL's MMIO operand.
        assert_eq!(g.read(gpa, 8), Err(Exception::DoubleFault));
        assert_eq!(
            g.mr_report(0, SHARED | 0x5000, 0),
            Err(Exception::DoubleFault)
        );
        handled(g, hlt);
        // Free again: OUT is a #VE with the VMX qualification (size 1, OUT,
        // port 0x3F8 in bits 31:16).
        let e = g.instruction(out);
        assert_eq!(e, Exception::Ve(ve(30, 0x3F8 << 16, 1)));
        handled(g, e);
        for (k, reason, len) in [
            (Instruction::Invd, 13, 2),
            (Instruction::Vmcall, 18, 3),
            (Instruction::Mwait, 36, 3),
            (Instruction::Monitor, 39, 3),
            (Instruction::Wbinvd, 54, 2),
            (Instruction::Pconfig, 65, 3),
        ] {
            let e = g.instruction(k);
            assert_eq!(e, Exception::Ve(ve(reason, 0, len)), "{k:?}");
            handled(g, e);
        }
        let e = g.read(gpa + 8, 8).unwrap_err();
        let pending = VirtualizationException {
            reason: 48,
            qualification: 1,
            gpa: gpa + 8,
            ..VirtualizationException::default()
        };
        assert_eq!(e, Exception::Ve(pending));
        // The guest's handler in this program does not read VE_INFO: the
        // MMIO access is then not a #VE the CPU can deliver (VE_INFO.VALID
        // set), but an EPT violation the module turns into a TD exit, at
        // every entry.
        let _ = g.read(SHARED | 0x5000, 4);
        unreachable!("the MMIO access exits while VE_INFO is valid");
    });
    for _ in 0..2 {
        let (rax, a) = enter(&sim, v);
        assert_eq!((rax, a.rcx, a.rdx, a.r8), (48, 1, 0, SHARED | 0x5000));
    }
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn an_mmio_access_with_ve_info_free_is_a_hardware_ve_and_veinfo_get_frees_it() {
    let sim = host();
    let td = runnable(&sim);
    let v = td.vcpus[0].tdvpr;
    sim.map_shared(td.tdr, SHARED | 0x5000, Some(tdx_sim::SharedMapping::Mmio));
    sim.set_guest(v, move |g: &mut Guest| {
        for write in [false, true] {
            let e = if write {
                g.write(SHARED | 0x5008, &[1]).unwrap_err()
            } else {
                g.read(SHARED | 0x5008, 1).unwrap_err()
            };
            let want = VirtualizationException {
                reason: 48,
                qualification: 1 + u64::from(write),
                gpa: SHARED | 0x5008,
                ..VirtualizationException::default()
            };
            assert_eq!(e, Exception::Ve(want));
            handled(g, e);
        }
        g.halt();
    });
    assert_eq!(enter(&sim, v), (77, halt_regs()));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// RDMSR / WRMSR
// ---------------------------------------------------------------------------

#[test]
fn msrs_are_direct_emulated_ve_or_gp_per_the_modules_table() {
    let sim = host();
    sim.set_tsc(0x1234);
    let td = runnable(&sim);
    let v = td.vcpus[0].tdvpr;
    let arch_caps = NativeCpu::default().arch_capabilities;
    sim.set_guest(v, move |g: &mut Guest| {
        let rd_ve = Exception::Ve(ve(31, 0, 2));
        let wr_ve = Exception::Ve(ve(32, 0, 2));
        // #VE: WRMSR of the TSC; MSRs the table lacks (APIC_BASE, the
        // x2APIC ICR, an MTRR, an MSR outside both bitmap ranges); WRMSR
        // of MISC_ENABLE; VMX capability MSRs with action #VE.
        assert_eq!(g.wrmsr(0x10, 5), Err(wr_ve));
        handled(g, wr_ve);
        for msr in [0x1B, 0x830, 0x2FF, 0x4000_0000, 0xC000_2000, 0x481] {
            assert_eq!(g.rdmsr(msr), Err(rd_ve), "RDMSR {msr:#x}");
            handled(g, rd_ve);
        }
        assert_eq!(g.wrmsr(0x830, 0), Err(wr_ve));
        handled(g, wr_ve);
        assert_eq!(g.wrmsr(0x1A0, MISC_ENABLE), Err(wr_ve));
        handled(g, wr_ve);
        // #GP: TSC_DEADLINE without CPUID(1).ECX.TSC_DEADLINE, features
        // the TD lacks (PMU without PERFMON, CET, PT, LBR without XFAM,
        // PKRS without PKS, XFD), SGX, reserved x2APIC, VMX MSR writes.
        for msr in [
            0x6E0, 0xC1, 0x186, 0x38F, 0x6A0, 0x570, 0x14CE, 0x6E1, 0x1C4, 0x8C, 0x9A, 0x800, 0x329,
        ] {
            assert_eq!(
                g.rdmsr(msr),
                Err(Exception::GeneralProtection),
                "RDMSR {msr:#x}"
            );
            assert_eq!(
                g.wrmsr(msr, 0),
                Err(Exception::GeneralProtection),
                "WRMSR {msr:#x}"
            );
        }
        assert_eq!(g.wrmsr(0x480, 0), Err(Exception::GeneralProtection));
        // Direct: the TSC reads the simulated TSC; PAT starts at its reset
        // value; SPEC_CTRL, the x2APIC TPR, FS_BASE read and write.
        assert_eq!(g.rdmsr(0x10), Ok(0x1234));
        assert_eq!(g.rdmsr(0x277), Ok(0x0007_0406_0007_0406));
        for (msr, val) in [(0x48, 1), (0x808, 0x20), (0xC000_0100, 0x7000), (0x277, 6)] {
            assert_eq!(g.wrmsr(msr, val), Ok(()));
            assert_eq!(g.rdmsr(msr), Ok(val));
        }
        // Emulated: MISC_ENABLE (no PERFMON: the LP's value with
        // PERFMON_AVAILABLE clear and PEBS_UNAVAILABLE set);
        // ARCH_CAPABILITIES; XAPIC_DISABLE_STATUS; PERF_CAPABILITIES 0;
        // VMX_BASIC (virtual values not modelled: 0).
        assert_eq!(g.rdmsr(0x1A0), Ok(MISC_ENABLE & !(1 << 7) | 1 << 12));
        assert_eq!(g.rdmsr(0x10A), Ok(arch_caps));
        assert_eq!(g.rdmsr(0xBD), Ok(1));
        assert_eq!(g.rdmsr(0x345), Ok(0));
        assert_eq!(g.rdmsr(0x480), Ok(0));
        // Writes to the read-only direct ones: the CPU's #GP.
        assert_eq!(g.wrmsr(0xBD, 0), Err(Exception::GeneralProtection));
        assert_eq!(g.wrmsr(0x10A, 0), Err(Exception::GeneralProtection));
        // EFER: starts 0x901; only SCE may change (LMA is kept); any other
        // change is a #VE.
        assert_eq!(g.rdmsr(0xC000_0080), Ok(0x901));
        assert_eq!(g.wrmsr(0xC000_0080, 0x900 | 1 << 10), Ok(()));
        assert_eq!(g.rdmsr(0xC000_0080), Ok(0x900));
        assert_eq!(g.wrmsr(0xC000_0080, 0x801), Err(wr_ve));
        handled(g, wr_ve);
        // XSS: only bits the CPU and XFAM (x87|SSE here: none) allow.
        assert_eq!(g.wrmsr(0xDA0, 1 << 8), Err(Exception::GeneralProtection));
        assert_eq!(g.wrmsr(0xDA0, 0), Ok(()));
        assert_eq!(g.rdmsr(0xDA0), Ok(0));
        // DEBUGCTL: reserved bits #GP; TR without BTS #VE; bit 13 reads 0.
        assert_eq!(g.wrmsr(0x1D9, 1 << 3), Err(Exception::GeneralProtection));
        assert_eq!(g.wrmsr(0x1D9, 1 << 16), Err(Exception::GeneralProtection));
        assert_eq!(g.wrmsr(0x1D9, 1 << 6), Err(wr_ve));
        handled(g, wr_ve);
        assert_eq!(g.wrmsr(0x1D9, 1 << 13 | 1 << 7 | 1 << 6 | 1), Ok(()));
        assert_eq!(g.rdmsr(0x1D9), Ok(1 << 7 | 1 << 6 | 1));
        g.halt();
    });
    assert_eq!(enter(&sim, v), (77, halt_regs()));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn feature_msrs_follow_the_tds_cpuid() {
    let sim = host();
    let mut p = Params::new();
    // CPUID(1).ECX: TSC_DEADLINE (24) and DCA (18).
    p.u32(CPUID_LEAF1 + 8, 1 << 24 | 1 << 18);
    let td = runnable_with(&sim, &p, 1);
    let v = td.vcpus[0].tdvpr;
    sim.set_guest(v, move |g: &mut Guest| {
        // With the feature: #VE (the guest asks the host); without: #GP.
        for msr in [0x6E0, 0x1F8, 0x1F9, 0x1FA] {
            let e = Exception::Ve(ve(31, 0, 2));
            assert_eq!(g.rdmsr(msr), Err(e), "RDMSR {msr:#x}");
            handled(g, e);
        }
        // TME and MKTME: CPUID(7,0) not configured.
        for msr in [0x981, 0x87] {
            assert_eq!(g.rdmsr(msr), Err(Exception::GeneralProtection));
        }
        g.halt();
    });
    assert_eq!(enter(&sim, v), (77, halt_regs()));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// The interruptible 2M accept
// ---------------------------------------------------------------------------

const G2M: u64 = 0x20_0000;

/// TDH.MEM.PAGE.AUG of a 2M page at [`G2M`] whose 4K chunks the host
/// filled with 0xAA before (the module zeroes them only at the accept).
fn aug_filled(sim: &Simulator, td: &mut Td) -> Pfn {
    td.map_sept(sim, G2M, 2);
    let page = td.run(sim, 512, 512).first();
    for i in 0..512 {
        sim.poke(page.hpa().as_u64() + i * PAGE, &[0xAA; 16]);
    }
    ok("PAGE.AUG", page_aug(sim, info(G2M, 1), td.tdr, page).status);
    page
}

/// The first byte of each 4K chunk of the 2M page at `page`.
fn chunks(sim: &Simulator, page: Pfn) -> Vec<u8> {
    (0..512)
        .map(|i| {
            let mut b = [0u8; 1];
            sim.peek(page.hpa().as_u64() + i * PAGE, &mut b);
            b[0]
        })
        .collect()
}

#[test]
fn a_kick_between_chunks_interrupts_a_2m_accept_which_resumes_from_its_counter() {
    let sim = host();
    let mut td = runnable(&sim);
    let v = td.vcpus[0].tdvpr;
    let page = aug_filled(&sim, &mut td);
    sim.set_guest(v, move |g: &mut Guest| {
        // One TDCALL for the program; its interruptions are invisible to
        // it.
        assert_eq!(g.accept(G2M, 1), TdxStatus::SUCCESS);
        assert_eq!(g.ops(), 1);
        assert_eq!(g.read(G2M + 0x1F_F000, 1), Ok(vec![0]));
        g.halt();
    });
    // The interrupt arrives while chunk 2 is zeroed: the module sees it
    // after chunk 2, with the counter at 3.
    sim.kick_during_accept(v, 3);
    assert_eq!(enter(&sim, v), (1, kick_regs()));
    let c = chunks(&sim, page);
    assert_eq!(&c[..4], &[0, 0, 0, 0xAA]);
    assert!(c[3..].iter().all(|&b| b == 0xAA));
    assert_eq!(sept_state(&sim, td.tdr, G2M, 1).0, SeptState::PENDING);
    // Interrupted again after one chunk: the resumed accept zeroed chunk 3
    // (ACCEPT_COUNTER was 3), not chunk 0 again.
    sim.kick_during_accept(v, 1);
    assert_eq!(enter(&sim, v), (1, kick_regs()));
    let c = chunks(&sim, page);
    assert_eq!(&c[..5], &[0, 0, 0, 0, 0xAA]);
    assert_eq!(sept_state(&sim, td.tdr, G2M, 1).0, SeptState::PENDING);
    assert_eq!(enter(&sim, v), (77, halt_regs()));
    assert!(chunks(&sim, page).iter().all(|&b| b == 0));
    assert_eq!(sept_state(&sim, td.tdr, G2M, 1).0, SeptState::MAPPED);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn an_interrupt_after_the_last_but_one_chunk_leaves_one_chunk_and_a_4k_accept_never_stops() {
    let sim = host();
    let mut td = runnable(&sim);
    let v = td.vcpus[0].tdvpr;
    let page = aug_filled(&sim, &mut td);
    td.aug(&sim, 0x1000, 0);
    sim.set_guest(v, move |g: &mut Guest| {
        // A 4K accept has no chunks and no interrupt check: the hook stays
        // armed for the 2M one.
        assert_eq!(g.accept(0x1000, 0), TdxStatus::SUCCESS);
        assert_eq!(g.accept(G2M, 1), TdxStatus::SUCCESS);
        g.halt();
    });
    // 511 checks: the last one comes after chunk 510.
    sim.kick_during_accept(v, 511);
    assert_eq!(enter(&sim, v), (1, kick_regs()));
    let c = chunks(&sim, page);
    assert!(c[..511].iter().all(|&b| b == 0));
    assert_eq!(c[511], 0xAA);
    assert_eq!(sept_state(&sim, td.tdr, 0x1000, 0).0, SeptState::MAPPED);
    assert_eq!(enter(&sim, v), (77, halt_regs()));
    assert!(chunks(&sim, page).iter().all(|&b| b == 0));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn block_of_an_interrupted_2m_accept_resets_its_counter() {
    let sim = host();
    let mut td = runnable(&sim);
    let v = td.vcpus[0].tdvpr;
    let page = aug_filled(&sim, &mut td);
    sim.set_guest(v, move |g: &mut Guest| {
        assert_eq!(g.accept(G2M, 1), TdxStatus::SUCCESS);
        g.halt();
    });
    // A frame that is no vCPU: nothing happens.
    sim.kick_during_accept(td.tdr, 1);
    sim.kick_during_accept(v, 5);
    assert_eq!(enter(&sim, v), (1, kick_regs()));
    assert_eq!(&chunks(&sim, page)[..6], &[0, 0, 0, 0, 0, 0xAA]);
    // BLOCK (PENDING_BLOCKED, ACCEPT_COUNTER := 0), TRACK, UNBLOCK.
    ok("BLOCK", range_block(&sim, info(G2M, 1), td.tdr).status);
    assert_eq!(
        sept_state(&sim, td.tdr, G2M, 1).0,
        SeptState::PENDING_BLOCKED
    );
    ok("TRACK", track(&sim, td.tdr));
    ok("UNBLOCK", range_unblock(&sim, info(G2M, 1), td.tdr).status);
    // The accept starts over at chunk 0: interrupted after one chunk,
    // chunk 5 is still the host's.
    sim.kick_during_accept(v, 1);
    assert_eq!(enter(&sim, v), (1, kick_regs()));
    assert_eq!(chunks(&sim, page)[5], 0xAA);
    assert_eq!(sept_state(&sim, td.tdr, G2M, 1).0, SeptState::PENDING);
    assert_eq!(enter(&sim, v), (77, halt_regs()));
    assert!(chunks(&sim, page).iter().all(|&b| b == 0));
    assert_eq!(sept_state(&sim, td.tdr, G2M, 1).0, SeptState::MAPPED);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// Host MSRs: TDH.VP.ENTER, TDH.VP.INIT, TDH.MNG.INIT
// ---------------------------------------------------------------------------

const TSC_ADJUST: OperandId = OperandId(0x3B);
const MISC: OperandId = OperandId(0x1A0);

#[test]
fn enter_refuses_boot_nt4_first_and_an_inconsistent_tsc_adjust_after_the_rcx_flags() {
    let sim = host();
    let td = runnable(&sim);
    let v = td.vcpus[0].tdvpr;
    assert!(
        !sim.set_host_msr(1 << 20, HostMsr::TscAdjust, 1),
        "no such LP"
    );
    // BOOT_NT4 comes before even the reserved RCX bits.
    assert!(sim.set_host_msr(VCPU_LP, HostMsr::MiscEnable, MISC_ENABLE | 1 << 22));
    enter_fails(&sim, v, 1, TdxStatus::LIMIT_CPUID_MAXVAL_SET);
    enter_fails(&sim, v, 0, TdxStatus::LIMIT_CPUID_MAXVAL_SET);
    sim.set_host_msr(VCPU_LP, HostMsr::MiscEnable, MISC_ENABLE);
    // IA32_TSC_ADJUST changed since TDH.SYS.INIT: after RCX bits 52/53,
    // before the TSC rollback.
    sim.set_host_msr(VCPU_LP, HostMsr::TscAdjust, 7);
    enter_fails(&sim, v, 1 << 53, invalid(OperandId::RCX));
    enter_fails(&sim, v, 1 << 52, invalid(OperandId::RCX));
    enter_fails(&sim, v, 0, e(TdxStatus::INCONSISTENT_MSR, TSC_ADJUST));
    // Another LP's value does not matter.
    sim.set_host_msr(VCPU_LP, HostMsr::TscAdjust, 0);
    sim.set_host_msr(0, HostMsr::TscAdjust, 7);
    assert_eq!(enter(&sim, v), (77, halt_regs()));
    // The last exit's TSC is 0: a rollback is not possible here, so the
    // order against it is shown with TSC moved and moved back.
    sim.set_tsc(100);
    assert_eq!(enter(&sim, v), (77, halt_regs()));
    sim.set_tsc(50);
    sim.set_host_msr(VCPU_LP, HostMsr::TscAdjust, 7);
    enter_fails(&sim, v, 0, e(TdxStatus::INCONSISTENT_MSR, TSC_ADJUST));
    sim.set_host_msr(VCPU_LP, HostMsr::TscAdjust, 0);
    enter_fails(&sim, v, 0, TdxStatus::TSC_ROLLBACK);
    sim.set_tsc(100);
    assert_eq!(enter(&sim, v), (77, halt_regs()));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn enter_of_a_monitor_mwait_td_needs_the_monitor_fsm_after_the_tsc_checks() {
    let sim = host();
    let mut p = Params::new();
    // CPUID(1).ECX.MONITOR (bit 3, ALLOW_DIRECT).
    p.u32(CPUID_LEAF1 + 8, 1 << 3);
    let mwait = runnable_with(&sim, &p, 1);
    let plain = runnable_hkid(&sim, td_hkid(&sim) + 1, &Params::new(), 1);
    let (v, w) = (mwait.vcpus[0].tdvpr, plain.vcpus[0].tdvpr);
    sim.set_guest(v, |g: &mut Guest| {
        // The TD's CPUID has it.
        assert_eq!(g.cpuid(1, 0).map(|r| r[2] & 1 << 3), Ok(1 << 3));
        g.halt();
    });
    sim.set_host_msr(VCPU_LP, HostMsr::MiscEnable, MISC_ENABLE & !(1 << 18));
    enter_fails(&sim, v, 0, e(TdxStatus::INCORRECT_MSR_VALUE, MISC));
    // A TD without MONITOR/MWAIT does not care.
    assert_eq!(enter(&sim, w), (77, halt_regs()));
    // TSC_ADJUST and the TSC rollback come first.
    sim.set_host_msr(VCPU_LP, HostMsr::TscAdjust, 1);
    enter_fails(&sim, v, 0, e(TdxStatus::INCONSISTENT_MSR, TSC_ADJUST));
    sim.set_host_msr(VCPU_LP, HostMsr::TscAdjust, 0);
    sim.set_host_msr(VCPU_LP, HostMsr::MiscEnable, MISC_ENABLE);
    sim.set_tsc(10);
    assert_eq!(enter(&sim, v), (77, halt_regs()));
    sim.set_tsc(5);
    sim.set_host_msr(VCPU_LP, HostMsr::MiscEnable, MISC_ENABLE & !(1 << 18));
    enter_fails(&sim, v, 0, TdxStatus::TSC_ROLLBACK);
    sim.set_tsc(10);
    enter_fails(&sim, v, 0, e(TdxStatus::INCORRECT_MSR_VALUE, MISC));
    sim.set_host_msr(VCPU_LP, HostMsr::MiscEnable, MISC_ENABLE);
    assert_eq!(enter(&sim, v), (77, halt_regs()));
    mwait.teardown(&sim);
    plain.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn vp_init_and_mng_init_check_the_host_msrs_too() {
    let sim = host();
    // TDH.MNG.INIT: BOOT_NT4 first (RCX 0); TSC_ADJUST after the TSC
    // frequency.
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    sim.set_host_msr(0, HostMsr::MiscEnable, MISC_ENABLE | 1 << 22);
    let c = on(&sim, 0, || td.try_init(&sim, &Params::new()));
    assert_eq!((c.status, c.out), (TdxStatus::LIMIT_CPUID_MAXVAL_SET, 0));
    sim.set_host_msr(0, HostMsr::MiscEnable, MISC_ENABLE);
    sim.set_host_msr(0, HostMsr::TscAdjust, 3);
    let c = on(&sim, 0, || td.try_init(&sim, &Params::new()));
    assert_eq!(
        (c.status, c.out),
        (e(TdxStatus::INCONSISTENT_MSR, TSC_ADJUST), 0)
    );
    let mut bad_freq = Params::new();
    bad_freq.u16(40, 1);
    let c = on(&sim, 0, || td.try_init(&sim, &bad_freq));
    assert_eq!(c.status, invalid(OperandId::TSC_FREQUENCY));
    sim.set_host_msr(0, HostMsr::TscAdjust, 0);
    on(&sim, 0, || td.init(&sim, &Params::new()));
    // TDH.VP.INIT: after the VCPU_INDEX is taken, which the failure keeps.
    let i = td.create_vcpu(&sim, 5);
    let tdvpr = td.vcpus[i].tdvpr;
    sim.set_host_msr(VCPU_LP, HostMsr::TscAdjust, 3);
    assert_eq!(
        on(&sim, VCPU_LP, || vp_init(&sim, tdvpr, 0, 0)),
        e(TdxStatus::INCONSISTENT_MSR, TSC_ADJUST)
    );
    sim.set_host_msr(VCPU_LP, HostMsr::TscAdjust, 0);
    td.init_vcpu(&sim, i, VCPU_LP);
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    sim.set_guest(tdvpr, |g: &mut Guest| {
        // VCPU_INDEX 1: index 0 went to the failed TDH.VP.INIT.
        let info = g.vp_info();
        assert_eq!((info.r8 & 0xFFFF_FFFF, info.r9), (2, 1));
        g.halt();
    });
    assert_eq!(enter(&sim, tdvpr), (77, halt_regs()));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// A fatal TD: which guest operations are VM exits
// ---------------------------------------------------------------------------

#[test]
fn in_a_fatal_td_cpuid_and_a_pending_access_exit_non_accessible_a_direct_msr_does_not() {
    use std::sync::mpsc;
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let a_i = td.add_vcpu(&sim, VCPU_LP);
    let b_i = td.add_vcpu(&sim, 2);
    let c_i = td.add_vcpu(&sim, 3);
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    let [va, vb, vc] = [a_i, b_i, c_i].map(|i| td.vcpus[i].tdvpr);
    td.aug(&sim, 0x8000, 0);
    sim.set_guest(va, |g: &mut Guest| g.fatal_td_event());
    // B and C enter and wait in the guest until A made the TD fatal.
    let mut parked = Vec::new();
    for (v, pending_read) in [(vb, false), (vc, true)] {
        let (in_tx, in_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        sim.set_guest(v, move |g: &mut Guest| {
            in_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            // A direct MSR access makes no VM exit: it still works.
            assert_eq!(g.wrmsr(0x48, 1), Ok(()));
            if pending_read {
                let _ = g.read(0x8000, 1);
            } else {
                let _ = g.cpuid(0, 0);
            }
            unreachable!("the VM exit leaves a fatal TD");
        });
        parked.push((v, in_rx, go_tx));
    }
    std::thread::scope(|s| {
        let lps = [2, 3];
        let hs: Vec<_> = parked
            .iter()
            .zip(lps)
            .map(|((v, ..), lp)| {
                let v = *v;
                let sim = &sim;
                s.spawn(move || enter_flags(sim, lp, v, 0, SeamcallArgs::default()))
            })
            .collect();
        for (_, in_rx, _) in &parked {
            in_rx.recv().unwrap();
        }
        let (rax, _) = enter(&sim, va);
        assert_eq!(rax, 0x6000_0002_0000_004B);
        for (_, _, go) in &parked {
            go.send(()).unwrap();
        }
        let got: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        // NON_RECOVERABLE_TD_NON_ACCESSIBLE over CPUID (10) and over the
        // EPT violation (48) the PENDING page's #VE would have come from.
        assert_eq!(got[0], (0x6000_0005_0000_000A, SeamcallArgs::default()));
        assert_eq!(got[1], (0x6000_0005_0000_0030, SeamcallArgs::default()));
    });
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}
