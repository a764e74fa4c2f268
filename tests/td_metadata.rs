//! The TD API's metadata reads and vCPU initialization on both modelled
//! modules: 1.5.01 (no TOPOLOGY_ENUM, TDH.VP.INIT version 0 only, no
//! MAX_VCPUS_PER_TD) and 1.5.05 (TDH.VP.INIT version 1 with the x2APIC ID,
//! MAX_VCPUS_PER_TD 576).

// UNSAFETY: guest frames are made from pages the simulator's allocator
// gave the test.
#![allow(unsafe_code)]

mod td_host;

use tdx::{
    Gpa, Leaf, Size4K, TdxStatus,
    api::{
        ARCH_MAX_VCPUS, CpuId, ExtInited, FrameAllocator, InitialRcx, ModuleVersion, Placement,
        TdxModule, X2ApicId,
        measure::{self, InitialPage},
        plan::{MemRange, PlanInput},
        td::{GuestFrame, Initialized, Operand, ParamsError, Td, TdError, TdHost},
    },
    types::{
        TdxError,
        abi::{EptPageWalk, EptpControls, TdParams},
        metadata::{TdLifecycle, TdOpState, field, td_field_id, td_fields, vcpu_fields},
    },
};
use tdx_sim::{MachineDesc, Profile, Simulator};

const GIB: u64 = 1 << 30;
const X2APIC_ID_NOT_UNIQUE: TdxStatus = TdxStatus::from_raw(0xC000_0621_0000_0000);

fn sim(profile: Profile) -> Simulator {
    let d = MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
        .with_cpus(2, 2)
        .with_profile(td_host::profile(profile));
    Simulator::new(d).unwrap()
}

type Module<'s> = TdxModule<ExtInited, &'s Simulator, &'s Simulator>;
type Host<'s> = TdHost<&'s Simulator, &'s Simulator>;

fn ready(sim: &Simulator) -> Module<'_> {
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    TdxModule::init(sim, sim)
        .unwrap()
        .configure(&input)
        .unwrap()
        .init_extensions()
        .unwrap()
}

fn params(max_vcpus: u16) -> TdParams {
    let mut p = TdParams::new();
    p.set_xfam(3);
    p.set_max_vcpus(max_vcpus);
    p.set_eptp_controls(EptpControls::write_back(EptPageWalk::FourLevel));
    p.set_tsc_frequency(100);
    p.set_config_flags(TdParams::CONFIG_FLAG_NO_RBP_MOD);
    p.set_mrconfigid(&[0x11; 48]);
    p.set_mrowner(&core::array::from_fn(|i| i as u8));
    p.set_mrownerconfig(&[0xEE; 48]);
    p
}

fn initialized<'h, 's>(h: &'h Host<'s>, max_vcpus: u16) -> Td<Initialized, &'h Host<'s>> {
    Td::create(h)
        .unwrap()
        .configure_keys()
        .unwrap()
        .add_tdcs()
        .unwrap()
        .init(&params(max_vcpus))
        .unwrap()
}

fn calls(sim: &Simulator, leaf: Leaf) -> u64 {
    sim.stats().seamcalls.get(&leaf.0).copied().unwrap_or(0)
}

/// Bring-up, a TD with three vCPUs on three CPUs, an initial page,
/// finalization, and every typed read, on `profile`.
fn build_and_read(profile: Profile) {
    let v1 = profile.features0.topology_enum();
    let sim = sim(profile.clone());
    let m = ready(&sim);
    let info = m.sysinfo().clone();
    let (major, minor, update) = profile.version;
    assert_eq!(
        info.version,
        Some(ModuleVersion {
            major,
            minor,
            update
        })
    );
    assert_eq!(info.max_vcpus_per_td, profile.max_vcpus_per_td);
    assert_eq!(
        info.vcpu_limit(),
        profile.max_vcpus_per_td.unwrap_or(ARCH_MAX_VCPUS)
    );
    assert_eq!(info.vp_init_takes_x2apic_id(), v1);
    let h = TdHost::new(m).unwrap();
    let mut td = initialized(&h, 4);
    // Before TDH.MR.FINALIZE: INITIALIZED, no vCPU, MRTD zero.
    assert_eq!(
        td.read(td_fields::OP_STATE).unwrap(),
        TdOpState::INITIALIZED
    );
    assert_eq!(td.read(td_fields::NUM_VCPUS).unwrap(), 0);
    assert_eq!(td.mrtd().unwrap(), [0; 48]);
    let vcpus: Vec<_> = [(0, 10), (1, 20), (2, 30)]
        .into_iter()
        .map(|(cpu, x2apic)| {
            td.create_vcpu(CpuId(cpu), InitialRcx(0), X2ApicId(x2apic))
                .unwrap()
        })
        .collect();
    // One TDH.VP.INIT each, in the version the module takes: none refused.
    assert_eq!(calls(&sim, Leaf::VP_INIT), 3);
    let contents = [0x5Au8; 4096];
    let frame = sim.alloc_pages(1, 1, Placement::Anywhere).unwrap().first();
    // SAFETY: allocated above for this TD and not used otherwise.
    let f = unsafe { GuestFrame::<Size4K>::new(frame) }.unwrap();
    td.add_page(Gpa::new(0), f, &contents, true).unwrap();
    let td = td.finalize().unwrap();

    // The TD's fields.
    assert_eq!(td.read(td_fields::OP_STATE).unwrap(), TdOpState::RUNNABLE);
    assert_eq!(
        td.read(td_fields::LIFECYCLE).unwrap(),
        TdLifecycle::KEYS_CONFIGURED
    );
    assert!(!td.read(td_fields::FATAL).unwrap());
    assert_eq!(td.read(td_fields::ATTRIBUTES).unwrap(), 0);
    assert_eq!(td.read(td_fields::XFAM).unwrap(), 3);
    assert_eq!(td.read(td_fields::MAX_VCPUS).unwrap(), 4);
    assert_eq!(td.read(td_fields::NUM_VCPUS).unwrap(), 3);
    assert_eq!(td.read(td_fields::NUM_ASSOC_VCPUS).unwrap(), 3);
    assert_eq!(td.read(td_fields::HKID).unwrap(), td.hkid());
    assert_eq!(td.read(td_fields::TSC_FREQUENCY).unwrap(), 100);
    assert!(!td.read(td_fields::GPAW).unwrap());
    assert_eq!(
        td.read(td_fields::CONFIG_FLAGS).unwrap(),
        TdParams::CONFIG_FLAG_NO_RBP_MOD
    );
    assert_eq!(td.read(td_fields::EPTP).unwrap() & 0xFFF, 0x1E);
    assert_eq!(td.read(td_fields::HP_LOCK_TIMEOUT).unwrap(), 1_000_000);
    assert_eq!(td.read(td_fields::MRCONFIGID).unwrap(), [0x11; 48]);
    assert_eq!(
        td.read(td_fields::MROWNER).unwrap(),
        core::array::from_fn::<u8, 48, _>(|i| i as u8)
    );
    assert_eq!(td.read(td_fields::MROWNERCONFIG).unwrap(), [0xEE; 48]);
    let expected = measure::mrtd([InitialPage {
        gpa: 0,
        contents: &contents,
        extend: true,
    }]);
    assert_eq!(td.mrtd().unwrap(), expected);
    assert_eq!(sim.mrtd(td.tdr()), Some(expected));
    // KVM's short form of a field reads the same.
    assert_eq!(td.read_raw(td_field_id(false, 17, 1)).unwrap(), 3);

    // Each vCPU's index, read where it is associated.
    for (i, v) in vcpus.iter().enumerate() {
        assert_eq!(v.index, i);
        let idx = td.vcpu_field(*v, vcpu_fields::VCPU_INDEX).unwrap();
        assert_eq!(idx as usize, i);
        assert_eq!(td.vcpu_field(*v, vcpu_fields::ASSOC_LPID).unwrap(), v.cpu.0);
        assert_eq!(td.vcpu_field(*v, vcpu_fields::XFAM).unwrap(), 3);
    }

    // The x2APIC IDs: recorded by a module with topology enumeration; a
    // field 1.5.01 does not have.
    let ids = field::TD_X2APIC_IDS;
    if v1 {
        for (i, want) in [10, 20, 30].into_iter().enumerate() {
            assert_eq!(td.read_raw(ids.element(i as u32).unwrap()).unwrap(), want);
        }
        let topology = field::TD_TOPOLOGY_ENUM_CONFIGURED;
        assert_eq!(td.read_raw(topology).unwrap(), 1);
    } else {
        assert_eq!(
            td.read_raw(ids).unwrap_err(),
            TdError::Seamcall {
                error: TdxError::new(Leaf::MNG_RD.v0(), TdxStatus::METADATA_FIELD_ID_INCORRECT),
                on: Operand::Tdr,
            }
        );
    }
    // A field the host may not read in a production TD.
    assert_eq!(
        td.read_raw(field::TD_CTLS).unwrap_err(),
        TdError::Seamcall {
            error: TdxError::new(Leaf::MNG_RD.v0(), TdxStatus::METADATA_FIELD_NOT_READABLE),
            on: Operand::Tdr,
        }
    );
    let r = td.teardown();
    assert!(r.leaked.is_empty(), "{r:?}");
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    sim.check_invariants().unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn module_1_5_01_builds_a_td_with_vcpus_through_vp_init_v0() {
    build_and_read(Profile::tdx_1_5());
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn module_1_5_05_builds_a_td_with_vcpus_through_vp_init_v1() {
    build_and_read(Profile::tdx_1_5_05());
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn the_vcpu_limit_is_the_modules() {
    for (profile, limit) in [(Profile::tdx_1_5(), 0xFFFF), (Profile::tdx_1_5_05(), 576)] {
        let sim = sim(profile);
        let h = TdHost::new(ready(&sim)).unwrap();
        let td = Td::create(&h)
            .unwrap()
            .configure_keys()
            .unwrap()
            .add_tdcs()
            .unwrap();
        let init = calls(&sim, Leaf::MNG_INIT);
        let f = td.init(&params(0)).unwrap_err();
        assert_eq!(
            f.error,
            TdError::Params(ParamsError::MaxVcpus {
                asked: 0,
                max: limit
            })
        );
        assert_eq!(calls(&sim, Leaf::MNG_INIT), init, "refused before the leaf");
        let td = f.returned.init(&params(limit)).unwrap();
        drop(td);
    }
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_duplicate_x2apic_id_is_refused_and_the_next_vcpu_gets_the_modules_index() {
    let sim = sim(Profile::tdx_1_5_05());
    let h = TdHost::new(ready(&sim)).unwrap();
    let mut td = initialized(&h, 4);
    let a = td
        .create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(7))
        .unwrap();
    assert_eq!(a.index, 0);
    let e = td
        .create_vcpu(CpuId(1), InitialRcx(0), X2ApicId(7))
        .unwrap_err();
    assert_eq!(
        e,
        TdError::Seamcall {
            error: TdxError::new(
                Leaf::VP_INIT.v(1),
                X2APIC_ID_NOT_UNIQUE.with_operand(tdx::types::OperandId(7))
            ),
            on: Operand::Vcpu(1),
        }
    );
    // Module 1.5.05 kept the index the refused call took: the next vCPU is
    // number 2, which the library reads back rather than counts.
    let b = td
        .create_vcpu(CpuId(2), InitialRcx(0), X2ApicId(8))
        .unwrap();
    assert_eq!(b.index, 2);
    assert_eq!(td.vcpus().collect::<Vec<_>>(), [a, b]);
    assert_eq!(td.read(td_fields::NUM_VCPUS).unwrap(), 3);
    let r = td.teardown();
    assert!(r.leaked.is_empty(), "{r:?}");
    sim.check_invariants().unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_vcpu_of_another_td_is_not_read() {
    let sim = sim(Profile::tdx_1_5());
    let h = TdHost::new(ready(&sim)).unwrap();
    let mut a = initialized(&h, 1);
    let mut b = initialized(&h, 1);
    let va = a.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0)).unwrap();
    b.create_vcpu(CpuId(1), InitialRcx(0), X2ApicId(0)).unwrap();
    assert_eq!(
        b.vcpu_field(va, vcpu_fields::VCPU_INDEX).unwrap_err(),
        TdError::UnknownVcpu(va.tdvpr)
    );
    drop((a, b));
}
