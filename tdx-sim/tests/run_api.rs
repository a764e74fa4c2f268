//! The guest model under tdx-api's vCPU handles: a TD built with the
//! library, whose vCPU the library enters, answers and migrates while a
//! guest program runs in the simulator.

use std::sync::mpsc;

use tdx_api::{
    CpuId, InitialRcx, TdxModule, X2ApicId,
    plan::{MemRange, PlanInput},
    td::{TdConfig, TdHost},
};
use tdx_sim::{Guest, MachineDesc, Profile, Simulator};
use tdx_types::exit::{TdExit, VmcallRegs, VmcallRequest, VmcallStatus, subfunction};

const GIB: u64 = 1 << 30;

#[test]
fn the_library_enters_answers_and_migrates_a_running_guest() {
    let sim = Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(2, 2)
            .with_profile(Profile::tdx_1_5()),
    )
    .unwrap();
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    let m = TdxModule::init(&sim, &sim)
        .unwrap()
        .configure(&input)
        .unwrap()
        .init_extensions()
        .unwrap();
    let host = TdHost::new(m).unwrap();
    let base = sim.accounting();
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = host.build_td(&params).unwrap();
    let id = td
        .create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();

    let (tx, rx) = mpsc::channel();
    sim.set_guest(id.tdvpr, move |g: &mut Guest| {
        let regs = VmcallRegs {
            r11: subfunction::GET_TD_VM_CALL_INFO,
            ..VmcallRegs::default()
        };
        // RDX, RBX, RSI, RDI, R8-R15, as Linux guests expose them.
        let r = g.vmcall(0xFFCC, regs).unwrap();
        tx.send((r.r10, r.r11)).unwrap();
        g.halt();
    });
    let mut v = td.vcpu(id).unwrap();
    let exit = v.enter(CpuId(0)).unwrap();
    assert!(matches!(exit, TdExit::Vmcall { .. }), "{exit:?}");
    assert!(matches!(
        v.vmcall(),
        Some(Ok(VmcallRequest::GetTdVmCallInfo { .. }))
    ));
    v.reply_r11(VmcallStatus::SUCCESS, 0x55).unwrap();
    // On another CPU: the library flushes the vCPU on CPU 0 first.
    let exit = v.enter(CpuId(3)).unwrap();
    assert!(
        matches!(v.vmcall(), Some(Ok(VmcallRequest::Hlt { .. }))),
        "{exit:?}"
    );
    assert_eq!(rx.recv().unwrap(), (0, 0x55));
    assert_eq!(v.cpu(), Some(CpuId(3)));
    v.reply(VmcallStatus::SUCCESS).unwrap();
    drop(v);
    let report = td.teardown();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(sim.accounting(), base);
    sim.check_invariants().unwrap();
}
