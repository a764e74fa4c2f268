//! A whole Trust Domain with raw leaves on the simulator: build (create,
//! keys, TDCS, init, vCPU, S-EPT, initial pages with measurement), finalize,
//! runtime mapping and removal (AUG, BLOCK, TRACK, REMOVE, WBINVD), and
//! teardown (VP.FLUSH, VPFLUSHDONE, CACHE.WB per package, FREEID, RECLAIM
//! with the TDR last, WBINVD of the TDR with the global KeyID). Every page
//! comes back and the simulator's invariants hold; the MRTD equals an
//! independent SHA-384 over the model's measurement blocks.

// UNSAFETY: raw leaf calls against the simulator (simulated memory).
#![allow(unsafe_code)]

use sha2::{Digest, Sha384};
use tdx_api::{
    CpuId, Cpus, DirectMap, FrameAllocator, FrameDeallocator, HardwareInfo, Placement,
    platform::on_each_package,
};
use tdx_sim::{MachineDesc, Profile, Simulator, testkit};
use tdx_sys::leaf;
use tdx_types::{
    Gpa, Hpa, Pfn, PfnRun, Size4K, TdxLevel, TdxStatus,
    regs::{KeyedPa, PageInfo, TdrAndFlags},
};

const GIB: u64 = 1 << 30;

fn host() -> Simulator {
    let memory = vec![(4 * GIB, 8 * GIB)];
    let sim = Simulator::new(
        MachineDesc::new(memory.clone())
            .with_cpus(2, 2)
            .with_profile(Profile::tdx_1_5()),
    )
    .unwrap();
    testkit::bring_up(
        &sim,
        &testkit::simple_layout(&memory, 4),
        Default::default(),
    );
    sim
}

fn page(sim: &Simulator) -> Pfn {
    sim.alloc_pages(1, 1, Placement::Anywhere).unwrap().first()
}

fn ok(what: &str, s: TdxStatus) {
    assert!(!s.is_error(), "{what}: {s}");
}

fn td_params(sim: &Simulator) -> Hpa {
    let p = page(sim).hpa();
    let mut b = [0u8; 1024];
    b[8..16].copy_from_slice(&3u64.to_le_bytes()); // XFAM: x87 | SSE
    b[16..18].copy_from_slice(&1u16.to_le_bytes()); // max_vcpus
    b[24..32].copy_from_slice(&0x1eu64.to_le_bytes()); // EPTP: WB, 4 levels
    b[40..42].copy_from_slice(&100u16.to_le_bytes()); // 2.5 GHz
    // SAFETY: the page was allocated from the simulator for us.
    unsafe { sim.write_phys(p, &b) };
    p
}

fn block(name: &str, gpa: u64) -> [u8; 128] {
    let mut b = [0u8; 128];
    b[..name.len()].copy_from_slice(name.as_bytes());
    b[16..24].copy_from_slice(&gpa.to_le_bytes());
    b
}

/// TDH.VP.RD/WR (on the vCPU's LP) of fields KVM uses (PEND_NMI,
/// VCPU_STATE_DETAILS, the posted-interrupt VMCS fields) and TDH.MNG.WR of
/// read-only TD fields.
fn vcpu_and_td_metadata(sim: &Simulator, tdr: Pfn, tdvpr: Pfn) {
    use tdx_types::metadata::{field, td_field_id};
    let vmcs = |f| td_field_id(false, field::TDVPS_CLASS_VMCS, f);
    // SAFETY: metadata leaves on the simulator touch only simulated memory.
    let rd = |id| unsafe { leaf::tdh_vp_rd(sim, tdvpr, id) };
    // SAFETY: as above.
    let wr = |id, v, m| unsafe { leaf::tdh_vp_wr(sim, tdvpr, id, v, m) };
    let c = rd(field::PEND_NMI);
    assert_eq!((c.status, c.out), (TdxStatus::SUCCESS, 0));
    ok("VP.WR PEND_NMI", wr(field::PEND_NMI, 1, 1));
    assert_eq!(rd(field::PEND_NMI).out, 1);
    // PEND_NMI is a byte, all of it writable (`tdvps_fields_lookup.c`).
    ok("VP.WR PEND_NMI", wr(field::PEND_NMI, 2, 2));
    assert_eq!(rd(field::PEND_NMI).out, 3);
    assert_eq!(
        wr(field::PEND_NMI, 0x100, 0x1FF),
        tdx_types::TdxStatus::from_raw(0xC000_0C03_0000_0000),
        "a bit beyond the byte would change: FIELD_VALUE_NOT_VALID"
    );
    assert_eq!(
        rd(field::PEND_NMI).out,
        3,
        "a refused write changes nothing"
    );
    let c = rd(field::VCPU_STATE_DETAILS);
    assert_eq!((c.status, c.out), (TdxStatus::SUCCESS, 0));
    assert_eq!(
        wr(field::VCPU_STATE_DETAILS, 1, 1),
        TdxStatus::METADATA_FIELD_NOT_WRITABLE
    );
    // Posted interrupts, as KVM sets them up: vector, descriptor, enable.
    ok("VP.WR POSTED_INTR_NV", wr(vmcs(0x0002), 0xf2, 0xffff));
    ok(
        "VP.WR POSTED_INTR_DESC_ADDR",
        wr(vmcs(0x2016), 0x1234_5000, u64::MAX),
    );
    ok("VP.WR PIN_BASED", wr(vmcs(0x4000), 1 << 7, 1 << 7));
    assert_eq!(rd(vmcs(0x0002)).out, 0xf2);
    assert_eq!(rd(vmcs(0x2016)).out, 0x1234_5000);
    assert_eq!(rd(vmcs(0x4000)).out, 1 << 7);
    assert_eq!(
        wr(vmcs(0x4000), 1, 1),
        TdxStatus::METADATA_FIELD_NOT_WRITABLE,
        "other pin-based controls belong to the module"
    );
    assert_eq!(
        rd(vmcs(0x681e)).status,
        TdxStatus::METADATA_FIELD_NOT_READABLE,
        "guest RIP: a debug TD's only"
    );
    // The TSC fields come from TD_PARAMS: readable, not writable.
    // SAFETY: as above.
    let c = unsafe { leaf::tdh_mng_wr(sim, tdr, tdx_types::metadata::field::TSC_OFFSET, 1, !0) };
    assert_eq!(c.status, TdxStatus::METADATA_FIELD_NOT_WRITABLE);
    // SAFETY: as above.
    let c = unsafe { leaf::tdh_mng_rd(sim, tdr, tdx_types::metadata::field::TSC_OFFSET) };
    assert_eq!(c.status, TdxStatus::SUCCESS);
}

/// The last S-EPT level through TDH.MEM.SEPT.ADD version 1, and its
/// outputs as `tdh_mem_sept_add.c` writes them: -1 for a page the module
/// took (or none given), bit 63 set only on a page not needed because the
/// entry existed (allow_existing), and bit 63 clear on a page an error
/// kept the module from taking.
fn sept_add_v1(sim: &Simulator, tdr: Pfn, pt: Pfn) {
    use tdx_sys::leaf::SEPT_ADD_PAGE_UNUSED as UNUSED;
    let at = |gpa| PageInfo::try_new(Gpa::new(gpa), TdxLevel::L2M).unwrap();
    let tdr_flags = |existing| TdrAndFlags::with_tdr(tdr, existing);
    let pa = pt.hpa().as_u64();
    // An L2 page: L2 S-EPTs are outside the model, refused on its register.
    let other = Pfn::new(pt.as_u64() + 1);
    // SAFETY: S-EPT leaves on the simulator touch only simulated memory.
    let c = unsafe {
        leaf::tdh_mem_sept_add_v1(
            sim,
            at(0),
            tdr_flags(false),
            [Some(pt), Some(other), None, None],
        )
    };
    assert_eq!(
        c.status,
        TdxStatus::OPERAND_INVALID.with_operand(tdx_types::OperandId::R9)
    );
    assert_eq!(c.out.pages, [pa, other.hpa().as_u64(), u64::MAX, u64::MAX]);
    // The L1 page alone: taken, returned as -1.
    // SAFETY: as above.
    let c = unsafe {
        leaf::tdh_mem_sept_add_v1(sim, at(0), tdr_flags(false), [Some(pt), None, None, None])
    };
    ok("SEPT.ADD v1", c.status);
    assert_eq!(c.out.pages, [u64::MAX; 4]);
    // No L1 page for an entry that exists: fine in v1.
    // SAFETY: as above.
    let c = unsafe { leaf::tdh_mem_sept_add_v1(sim, at(0), tdr_flags(false), [None; 4]) };
    ok("SEPT.ADD v1, existing", c.status);
    assert_eq!(c.out.pages, [u64::MAX; 4]);
    // A page for an entry that exists, with allow_existing: not used.
    // SAFETY: as above.
    let c = unsafe {
        leaf::tdh_mem_sept_add_v1(sim, at(0), tdr_flags(true), [Some(other), None, None, None])
    };
    ok("SEPT.ADD v1, allow_existing", c.status);
    assert_eq!(
        c.out.pages,
        [other.hpa().as_u64() | UNUSED, u64::MAX, u64::MAX, u64::MAX]
    );
    // No L1 page for a free entry: the entry's state is wrong.
    // SAFETY: as above.
    let c = unsafe { leaf::tdh_mem_sept_add_v1(sim, at(2 << 20), tdr_flags(false), [None; 4]) };
    assert_eq!(
        c.status,
        TdxStatus::EPT_ENTRY_STATE_INCORRECT.with_operand(tdx_types::OperandId::RCX)
    );
    // (Version 0 with R8 = -1 cannot be written with the typed leaf: a
    // `Pfn` always names a page.)
}

#[test]
fn build_run_teardown() {
    let sim = host();
    let global = sim.hardware().keyid_partition.global_keyid();
    let hkid = (global + 1) as u16;
    let (tdr, tdcs, tdvpr) = (page(&sim), [0; 6].map(|_| page(&sim)), page(&sim));
    let tdcx = [0; 5].map(|_| page(&sim));
    let sept = [0; 3].map(|_| page(&sim));
    let (private, source, aug) = (page(&sim), page(&sim), page(&sim));
    let contents: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    // SAFETY: allocated from the simulator for us.
    unsafe { sim.write_phys(source.hpa(), &contents) };
    let params = td_params(&sim);

    // SAFETY: (this holds for every leaf below) simulated memory; each page handed over was
    // allocated from the simulator for that purpose.
    // SAFETY: as above.
    ok("MNG.CREATE", unsafe {
        leaf::tdh_mng_create(&sim, tdr, hkid)
    });
    on_each_package(&sim, &mut |_, _| {
        // SAFETY: as above.
        ok("MNG.KEY.CONFIG", unsafe {
            leaf::tdh_mng_key_config(&sim, tdr)
        })
    });
    for p in tdcs {
        // SAFETY: as above.
        ok("MNG.ADDCX", unsafe { leaf::tdh_mng_addcx(&sim, p, tdr) });
    }
    // SAFETY: as above.
    let c = unsafe { leaf::tdh_mng_init(&sim, tdr, params) };
    ok("MNG.INIT", c.status);
    // SAFETY: as above.
    ok("VP.CREATE", unsafe {
        leaf::tdh_vp_create(&sim, tdvpr, tdr)
    });
    for p in tdcx {
        // SAFETY: as above.
        ok("VP.ADDCX", unsafe { leaf::tdh_vp_addcx(&sim, p, tdvpr) });
    }
    sim.on_cpu(CpuId(1), &mut || {
        // SAFETY: as above. (Version 0: module 1.5.01 refuses version 1.)
        ok("VP.INIT", unsafe { leaf::tdh_vp_init_v0(&sim, tdvpr, 0) })
    });
    // On the vCPU's LP: VP.RD/WR from another LP is VCPU_ASSOCIATED.
    sim.on_cpu(CpuId(1), &mut || vcpu_and_td_metadata(&sim, tdr, tdvpr));
    // S-EPT pages for GPA 0: PDPT (under the PML4 entry), PD, PT.
    for (level, p) in [(TdxLevel::L512G, sept[0]), (TdxLevel::L1G, sept[1])] {
        let info = PageInfo::try_new(Gpa::new(0), level).unwrap();
        // SAFETY: as above.
        let c = unsafe { leaf::tdh_mem_sept_add(&sim, info, TdrAndFlags::with_tdr(tdr, false), p) };
        ok("SEPT.ADD", c.status);
    }
    sept_add_v1(&sim, tdr, sept[2]);
    let info = PageInfo::for_page::<Size4K>(Gpa::new(0)).unwrap();
    // SAFETY: as above.
    ok(
        "PAGE.ADD",
        // SAFETY: as above.
        unsafe { leaf::tdh_mem_page_add(&sim, info, tdr, private, source) }.status,
    );
    for chunk in 0..16 {
        // SAFETY: as above.
        ok(
            "MR.EXTEND",
            // SAFETY: as above.
            unsafe { leaf::tdh_mr_extend(&sim, tdr, Gpa::new(chunk * 256)) }.status,
        );
    }
    // SAFETY: as above.
    ok("MR.FINALIZE", unsafe { leaf::tdh_mr_finalize(&sim, tdr) });

    // MRTD: read it back and compute it independently.
    let mut mrtd = Vec::new();
    for i in 0..6 {
        let id = tdx_types::metadata::field::TD_MRTD
            .element(i as u32)
            .unwrap();
        // SAFETY: as above.
        let c = unsafe { leaf::tdh_mng_rd(&sim, tdr, id) };
        ok("MNG.RD", c.status);
        mrtd.extend_from_slice(&c.out.to_le_bytes());
    }
    let mut h = Sha384::new();
    h.update(block("MEM.PAGE.ADD", 0));
    for chunk in 0..16u64 {
        h.update(block("MR.EXTEND", chunk * 256));
        h.update(&contents[chunk as usize * 256..][..256]);
    }
    assert_eq!(mrtd, h.finalize().to_vec());

    // Runtime: AUG a page, then remove it the way a running TD requires.
    let gpa = Gpa::new(0x1000);
    let info = PageInfo::for_page::<Size4K>(gpa).unwrap();
    // SAFETY: as above.
    ok(
        "PAGE.AUG",
        // SAFETY: as above.
        unsafe { leaf::tdh_mem_page_aug(&sim, info, tdr, aug) }.status,
    );
    // SAFETY: as above.
    let c = unsafe { leaf::tdh_mem_page_remove(&sim, info, tdr) };
    assert_eq!(
        c.status,
        TdxStatus::GPA_RANGE_NOT_BLOCKED.with_operand(tdx_types::OperandId::RCX)
    );
    // SAFETY: as above.
    ok(
        "RANGE.BLOCK",
        // SAFETY: as above.
        unsafe { leaf::tdh_mem_range_block(&sim, info, tdr) }.status,
    );
    // SAFETY: as above.
    let c = unsafe { leaf::tdh_mem_page_remove(&sim, info, tdr) };
    assert_eq!(
        c.status,
        TdxStatus::TLB_TRACKING_NOT_DONE.with_operand(tdx_types::OperandId::RCX)
    );
    // SAFETY: as above.
    ok("MEM.TRACK", unsafe { leaf::tdh_mem_track(&sim, tdr) });
    // SAFETY: as above.
    let c = unsafe { leaf::tdh_mem_page_remove(&sim, info, tdr) };
    ok("PAGE.REMOVE", c.status);
    assert_eq!(c.out.removed(), Some(aug));
    let shift = sim.machine().hkid_start_bit();
    // SAFETY: as above.
    ok("PAGE.WBINVD", unsafe {
        leaf::tdh_phymem_page_wbinvd(&sim, KeyedPa::try_new(aug.hpa(), hkid, shift).unwrap())
    });

    // Teardown, with the out-of-order steps refused first.
    // SAFETY: as above.
    assert_eq!(
        // SAFETY: as above.
        unsafe { leaf::tdh_mng_vpflushdone(&sim, tdr) },
        TdxStatus::FLUSHVP_NOT_DONE
    );
    sim.on_cpu(CpuId(0), &mut || {
        // SAFETY: as above.
        assert_eq!(
            // SAFETY: as above.
            unsafe { leaf::tdh_vp_flush(&sim, tdvpr) },
            TdxStatus::VCPU_NOT_ASSOCIATED
        )
    });
    sim.on_cpu(CpuId(1), &mut || {
        // SAFETY: as above.
        ok("VP.FLUSH", unsafe { leaf::tdh_vp_flush(&sim, tdvpr) })
    });
    // SAFETY: as above.
    ok("VPFLUSHDONE", unsafe {
        leaf::tdh_mng_vpflushdone(&sim, tdr)
    });
    // SAFETY: as above.
    assert_eq!(
        // SAFETY: as above.
        unsafe { leaf::tdh_mng_key_freeid(&sim, tdr) },
        TdxStatus::WBCACHE_NOT_COMPLETE
    );
    on_each_package(&sim, &mut |_, _| {
        // SAFETY: as above.
        ok("CACHE.WB", unsafe {
            leaf::tdh_phymem_cache_wb(&sim, false)
        })
    });
    // SAFETY: as above.
    assert_eq!(
        // SAFETY: as above.
        unsafe { leaf::tdh_phymem_page_reclaim(&sim, tdr) }.status,
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    // SAFETY: as above.
    ok("KEY.FREEID", unsafe { leaf::tdh_mng_key_freeid(&sim, tdr) });
    // SAFETY: as above.
    assert_eq!(
        // SAFETY: as above.
        unsafe { leaf::tdh_phymem_page_reclaim(&sim, tdr) }.status,
        TdxStatus::TD_ASSOCIATED_PAGES_EXIST
    );
    let children: Vec<Pfn> = sept
        .iter()
        .chain(&tdcx)
        .chain([&tdvpr])
        .chain(&tdcs)
        .chain([&private])
        .copied()
        .collect();
    for p in &children {
        // SAFETY: as above.
        ok(
            "RECLAIM",
            // SAFETY: as above.
            unsafe { leaf::tdh_phymem_page_reclaim(&sim, *p) }.status,
        );
    }
    // SAFETY: as above.
    ok(
        "RECLAIM TDR",
        // SAFETY: as above.
        unsafe { leaf::tdh_phymem_page_reclaim(&sim, tdr) }.status,
    );
    // SAFETY: as above.
    ok("WBINVD TDR", unsafe {
        leaf::tdh_phymem_page_wbinvd(
            &sim,
            KeyedPa::try_new(tdr.hpa(), global as u16, shift).unwrap(),
        )
    });
    for p in children
        .iter()
        .chain([&tdr, &source, &aug])
        .chain([&Pfn::containing(params)])
    {
        // SAFETY: every page is back with the host and flushed.
        unsafe { sim.free_pages(PfnRun::try_new(*p, 1).unwrap()) };
    }
    let a = sim.accounting();
    assert_eq!(a.host, 0, "{a:?}");
    sim.check_invariants().unwrap();
}
