//! TD_PARAMS checked on the host (`tdx::api::td::check_params`) before
//! TDH.MNG.INIT, against the `SysInfo` of a simulated module 1.5.01: one
//! case per rule with the typed error it gives, the rules it leaves to the
//! module (which then answers with its own status, the TD coming back), the
//! CPUID rules it applies only to the CPUID lists it knows (modules
//! 1.5.01's and 1.5.05's), and
//! `TdConfig`'s IA32_ARCH_CAPABILITIES setting.

mod td_host;

use tdx::{
    Leaf, TdxStatus,
    api::{
        ExtInited, SysInfo, TdxModule,
        plan::{MemRange, PlanInput},
        td::{ParamsError, TdConfig, TdError, TdHost, XfamRule, check_params},
    },
    types::{
        OperandId,
        abi::{
            CPUID_CONFIG_1_5_01, CpuidValues, EptPageWalk, EptpControls, NUM_CPUID_CONFIG_1_5_01,
            TdParams,
        },
    },
};
use tdx_sim::{MachineDesc, NativeCpu, Profile, Simulator};

const GIB: u64 = 1 << 30;

fn sim_with(cpu: NativeCpu) -> Simulator {
    Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(1, 2)
            .with_profile(td_host::profile(Profile::tdx_1_5()))
            .with_cpu(cpu),
    )
    .unwrap()
}

fn ready(sim: &Simulator) -> TdxModule<ExtInited, &Simulator, &Simulator> {
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

/// The `SysInfo` the library read from a default simulated module 1.5.01.
fn sysinfo() -> SysInfo {
    let sim = sim_with(NativeCpu::default());
    ready(&sim).sysinfo().clone()
}

/// What Linux would pass: x87|SSE, 4-level EPT, NO_RBP_MOD, 2.5 GHz.
fn base() -> TdParams {
    TdConfig::builder().max_vcpus(4).build().to_params()
}

fn with(f: impl FnOnce(&mut TdParams)) -> TdParams {
    let mut p = base();
    f(&mut p);
    p
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn the_sysinfo_of_module_1_5_01() {
    let info = sysinfo();
    assert_eq!(info.attributes_fixed, (0x8000_0000_7000_0001, 0));
    assert_eq!(info.xfam_fixed, (0x6_1BE7, 3));
    assert_eq!(info.cpuid_config.len(), NUM_CPUID_CONFIG_1_5_01);
    for ((leaf, _), rule) in info.cpuid_config.iter().zip(&CPUID_CONFIG_1_5_01) {
        assert_eq!(*leaf, rule.leaf_subleaf());
    }
    assert_eq!(check_params(&info, &base()), Ok(4));
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn each_rule_gives_its_error() {
    let info = sysinfo();
    let migratable = TdParams::ATTRIBUTE_MIGRATABLE;
    let cases: Vec<(&str, TdParams, Result<u8, ParamsError>)> = vec![
        // ATTRIBUTES.
        (
            "KL (bit 31)",
            with(|p| p.set_attributes(1 << 31)),
            Err(ParamsError::Attributes(1 << 31)),
        ),
        ("migratable", with(|p| p.set_attributes(migratable)), Ok(4)),
        (
            "migratable debug",
            with(|p| p.set_attributes(migratable | 1)),
            Err(ParamsError::MigratableAttributes(migratable | 1)),
        ),
        (
            "migratable perfmon",
            with(|p| p.set_attributes(migratable | 1 << 63)),
            Err(ParamsError::MigratableAttributes(migratable | 1 << 63)),
        ),
        (
            "debug perfmon pks sept_ve_disable",
            with(|p| p.set_attributes(0x8000_0000_5000_0001)),
            Ok(4),
        ),
        // XFAM.
        ("no SSE", with(|p| p.set_xfam(1)), Err(ParamsError::Xfam(1))),
        (
            "ULI (the CPU has none)",
            with(|p| p.set_xfam(0x4003)),
            Err(ParamsError::Xfam(0x4003)),
        ),
        (
            "AVX-512 without AVX",
            with(|p| p.set_xfam(0xE3)),
            Err(ParamsError::XfamCombination {
                xfam: 0xE3,
                rule: XfamRule::Avx512NeedsAvx,
            }),
        ),
        (
            "two AVX-512 bits",
            with(|p| p.set_xfam(0x67)),
            Err(ParamsError::XfamCombination {
                xfam: 0x67,
                rule: XfamRule::Avx512Together,
            }),
        ),
        (
            "CET user only",
            with(|p| p.set_xfam(0x803)),
            Err(ParamsError::XfamCombination {
                xfam: 0x803,
                rule: XfamRule::CetTogether,
            }),
        ),
        (
            "AMX TILEDATA only",
            with(|p| p.set_xfam(0x4_0003)),
            Err(ParamsError::XfamCombination {
                xfam: 0x4_0003,
                rule: XfamRule::AmxTogether,
            }),
        ),
        (
            "AVX, AVX-512, CET, AMX",
            with(|p| p.set_xfam(0x6_18E7)),
            Ok(4),
        ),
        // MAX_VCPUS, L2 VMs.
        (
            "max_vcpus 0",
            with(|p| p.set_max_vcpus(0)),
            // Module 1.5.01 reports no MAX_VCPUS_PER_TD: the limit is 0xFFFF.
            Err(ParamsError::MaxVcpus {
                asked: 0,
                max: 0xFFFF,
            }),
        ),
        (
            "an L2 VM",
            with(|p| p.set_num_l2_vms(1)),
            Err(ParamsError::L2Vms(1)),
        ),
        // Reserved bytes, in the module's order.
        (
            "config_flags bit 3",
            with(|p| p.set_config_flags(1 << 3)),
            Err(ParamsError::ConfigFlags(1 << 3)),
        ),
        (
            "EPTP A/D",
            with(|p| p.set_eptp_controls(EptpControls::from_raw(0x5e))),
            Err(ParamsError::Eptp(0x5e)),
        ),
        (
            "GPAW with 4 levels",
            with(|p| p.set_config_flags(TdParams::CONFIG_FLAG_MAX_GPAW)),
            Err(ParamsError::Eptp(0x1e)),
        ),
        (
            "GPAW with 5 levels",
            with(|p| {
                p.set_config_flags(TdParams::CONFIG_FLAG_MAX_GPAW);
                p.set_eptp_controls(EptpControls::write_back(EptPageWalk::FiveLevel));
            }),
            Ok(5),
        ),
        (
            "TSC 401",
            with(|p| p.set_tsc_frequency(401)),
            Err(ParamsError::TscFrequency(401)),
        ),
        (
            "msr_config_ctls bit 1",
            with(|p| p.set_msr_config_ctls(2)),
            Err(ParamsError::Reserved { offset: 19 }),
        ),
        // CPUID entries.
        (
            "leaf 1 EAX bit 28",
            with(|p| {
                p.set_cpuid_value(0, CpuidValues::new(1 << 28, 0, 0, 0))
                    .unwrap()
            }),
            Err(ParamsError::CpuidBits {
                index: 0,
                leaf: 1,
                subleaf: u32::MAX,
                register: "EAX",
                bits: 1 << 28,
            }),
        ),
        (
            "leaf 4/3 EDX bit 3",
            with(|p| {
                p.set_cpuid_value(4, CpuidValues::new(0, 0, 0, 0xF))
                    .unwrap()
            }),
            Err(ParamsError::CpuidBits {
                index: 4,
                leaf: 4,
                subleaf: 3,
                register: "EDX",
                bits: 0x8,
            }),
        ),
        (
            "leaf 0xA anything",
            with(|p| p.set_cpuid_value(7, CpuidValues::new(0, 0, 1, 0)).unwrap()),
            Err(ParamsError::CpuidBits {
                index: 7,
                leaf: 0xA,
                subleaf: u32::MAX,
                register: "ECX",
                bits: 1,
            }),
        ),
        (
            "leaf 0x23/0 EAX 3:0",
            with(|p| {
                p.set_cpuid_value(11, CpuidValues::new(0xF, 0, 0, 0))
                    .unwrap()
            }),
            Ok(4),
        ),
        (
            "entry 12 (reserved_3)",
            with(|p| p.set_cpuid_value(12, CpuidValues::new(0, 0, 0, 1)).unwrap()),
            Err(ParamsError::CpuidEntryUnused {
                index: 12,
                count: 12,
            }),
        ),
        (
            "a CPUID bit before reserved_3",
            with(|p| {
                p.set_cpuid_value(47, CpuidValues::new(1, 0, 0, 0)).unwrap();
                p.set_cpuid_value(9, CpuidValues::new(1, 0, 0, 0)).unwrap();
            }),
            Err(ParamsError::CpuidBits {
                index: 9,
                leaf: 0x8000_0008,
                subleaf: u32::MAX,
                register: "EAX",
                bits: 1,
            }),
        ),
        // IA32_ARCH_CAPABILITIES.
        (
            "arch caps without the enable bit",
            with(|p| p.set_ia32_arch_capabilities_config(1 << 4)),
            Err(ParamsError::ArchCapabilitiesNotEnabled(1 << 4)),
        ),
        (
            "arch caps bit 0",
            with(|p| {
                p.set_msr_config_ctls(1);
                p.set_ia32_arch_capabilities_config(1 | 1 << 4);
            }),
            Err(ParamsError::ArchCapabilities {
                config: 0x11,
                bits: 1,
            }),
        ),
        (
            "arch caps, the four bits",
            with(|p| {
                p.set_msr_config_ctls(1);
                p.set_ia32_arch_capabilities_config(0x0118_0010);
            }),
            Ok(4),
        ),
        (
            "reserved_3 before arch caps",
            with(|p| {
                p.set_ia32_arch_capabilities_config(1);
                p.set_cpuid_value(20, CpuidValues::new(1, 0, 0, 0)).unwrap();
            }),
            Err(ParamsError::CpuidEntryUnused {
                index: 20,
                count: 12,
            }),
        ),
    ];
    for (what, p, want) in cases {
        assert_eq!(check_params(&info, &p), want, "{what}");
        if let Err(e) = want {
            assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn every_bit_the_1_5_01_table_allows_passes() {
    let info = sysinfo();
    let p = with(|p| {
        for (i, rule) in CPUID_CONFIG_1_5_01.iter().enumerate() {
            p.set_cpuid_value(i, rule.allowed()).unwrap();
        }
    });
    assert_eq!(check_params(&info, &p), Ok(4));
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn another_modules_cpuid_list_leaves_the_bits_to_the_module() {
    let mut info = sysinfo();
    // A module with a 13th configurable leaf: the library does not know
    // its ALLOW_DIRECT bits, so it checks no bits, only the entry count.
    info.cpuid_config.push((0x24, [0, 0]));
    let bits = with(|p| {
        p.set_cpuid_value(7, CpuidValues::new(1, 0, 0, 0)).unwrap();
        p.set_cpuid_value(12, CpuidValues::new(1, 0, 0, 0)).unwrap();
        p.set_msr_config_ctls(1);
        p.set_ia32_arch_capabilities_config(1);
    });
    assert_eq!(check_params(&info, &bits), Ok(4));
    let past = with(|p| p.set_cpuid_value(13, CpuidValues::new(1, 0, 0, 0)).unwrap());
    assert_eq!(
        check_params(&info, &past),
        Err(ParamsError::CpuidEntryUnused {
            index: 13,
            count: 13
        })
    );
    // The enable bit is every module's rule.
    let arch = with(|p| p.set_ia32_arch_capabilities_config(1));
    assert_eq!(
        check_params(&info, &arch),
        Err(ParamsError::ArchCapabilitiesNotEnabled(1))
    );
}

fn calls(sim: &Simulator, leaf: Leaf) -> u64 {
    sim.stats().seamcalls.get(&leaf.0).copied().unwrap_or(0)
}

/// Module 1.5.05 end to end: the library reads its 18 configurable leaves,
/// knows them ([`tdx::types::abi::CPUID_CONFIG_1_5_05`]), refuses a
/// malformed CPUID(0x1F) topology before the leaf, and builds TDs with
/// leaf 7/1's new bits and with a topology.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn module_1_5_05s_cpuid_list_end_to_end() {
    use tdx::types::abi::CPUID_CONFIG_1_5_05;
    let sim = Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(1, 2)
            .with_profile(td_host::profile(Profile::tdx_1_5_05())),
    )
    .unwrap();
    let module = ready(&sim);
    let info = module.sysinfo().clone();
    let h = TdHost::new(module).unwrap();
    assert_eq!(info.cpuid_config.len(), CPUID_CONFIG_1_5_05.len());
    for ((leaf, _), rule) in info.cpuid_config.iter().zip(&CPUID_CONFIG_1_5_05) {
        assert_eq!(*leaf, rule.leaf_subleaf());
    }
    let level = |n: u32, t: u32| n | t << 8;
    let td = || {
        h.create_td()
            .unwrap()
            .configure_keys()
            .unwrap()
            .add_tdcs()
            .unwrap()
    };
    // SMT alone: no CORE level.
    let before = calls(&sim, Leaf::MNG_INIT);
    let smt = with(|p| {
        p.set_cpuid_value(12, CpuidValues::new(1, 2, level(0, 1), 0))
            .unwrap()
    });
    let f = td().init(&smt).unwrap_err();
    assert_eq!(
        f.error,
        TdError::Params(ParamsError::CpuidTopology { subleaf: 1 })
    );
    assert_eq!(
        calls(&sim, Leaf::MNG_INIT),
        before,
        "no TDH.MNG.INIT issued"
    );
    // SMT then CORE, and leaf 7/1 EAX bit 26: the module agrees.
    let good = with(|p| {
        p.set_cpuid_value(6, CpuidValues::new(1 << 26, 0, 0, 0x430))
            .unwrap();
        p.set_cpuid_value(12, CpuidValues::new(1, 2, level(0, 1), 0))
            .unwrap();
        p.set_cpuid_value(13, CpuidValues::new(4, 16, level(1, 2), 0))
            .unwrap();
    });
    assert_eq!(check_params(&info, &good), Ok(4));
    let built = f.returned.init(&good).unwrap();
    drop(built);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn td_init_refuses_before_the_leaf_and_leaves_the_cpu_rules_to_the_module() {
    // A CPU without 5-level EPT, whose F/M/S is Emerald Rapids stepping 2.
    let sim = sim_with(NativeCpu {
        ept_pml5: false,
        fms: 0xC06F2,
        ..NativeCpu::default()
    });
    let h = TdHost::new(ready(&sim)).unwrap();
    let td = h
        .create_td()
        .unwrap()
        .configure_keys()
        .unwrap()
        .add_tdcs()
        .unwrap();
    let before = calls(&sim, Leaf::MNG_INIT);
    let f = td
        .init(&with(|p| {
            p.set_attributes(TdParams::ATTRIBUTE_MIGRATABLE | 1)
        }))
        .unwrap_err();
    assert_eq!(
        f.error,
        TdError::Params(ParamsError::MigratableAttributes(0x2000_0001))
    );
    let f = f
        .returned
        .init(&with(|p| {
            p.set_cpuid_value(12, CpuidValues::new(0, 1, 0, 0)).unwrap()
        }))
        .unwrap_err();
    assert_eq!(
        f.error,
        TdError::Params(ParamsError::CpuidEntryUnused {
            index: 12,
            count: 12
        })
    );
    assert_eq!(
        calls(&sim, Leaf::MNG_INIT),
        before,
        "no TDH.MNG.INIT issued"
    );

    // 5-level EPT: the host cannot know the CPU lacks it; the module says.
    let five = with(|p| p.set_eptp_controls(EptpControls::write_back(EptPageWalk::FiveLevel)));
    let f = f.returned.init(&five).unwrap_err();
    let TdError::Seamcall { error, .. } = f.error else {
        panic!("{:?}", f.error)
    };
    assert_eq!(
        error.status(),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::EPTP_CONTROLS)
    );
    // Leaf 1 EAX = Sapphire Rapids on an Emerald Rapids CPU, not migratable.
    let spr = with(|p| {
        p.set_cpuid_value(0, CpuidValues::new(0x806F8, 0, 0, 0))
            .unwrap()
    });
    let f = f.returned.init(&spr).unwrap_err();
    let TdError::Seamcall { error, .. } = f.error else {
        panic!("{:?}", f.error)
    };
    assert_eq!(
        error.status(),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::CPUID_CONFIG)
    );
    assert_eq!(calls(&sim, Leaf::MNG_INIT), before + 2);
    // The same F/M/S in a migratable TD: an older model the module lists.
    let mut migratable = spr;
    migratable.set_attributes(TdParams::ATTRIBUTE_MIGRATABLE);
    let td = f.returned.init(&migratable).unwrap();
    drop(td);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn td_config_sets_arch_capabilities_the_way_the_module_wants() {
    let info = sysinfo();
    let p = TdConfig::builder()
        .max_vcpus(1)
        .ia32_arch_capabilities(1 << 24)
        .build()
        .to_params();
    assert_eq!(check_params(&info, &p), Ok(4));
    let p = TdConfig::builder()
        .max_vcpus(1)
        .ia32_arch_capabilities(1 << 7)
        .build()
        .to_params();
    assert_eq!(
        check_params(&info, &p),
        Err(ParamsError::ArchCapabilities {
            config: 1 << 7,
            bits: 1 << 7
        })
    );
}
