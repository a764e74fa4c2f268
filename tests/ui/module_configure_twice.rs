// Guarantee: the module is configured once. `configure` consumes the
// `Unconfigured` handle and exists on no other state, so a second
// TDH.SYS.CONFIG cannot be issued through the safe API.
use tdx::api::{
    TdxModule,
    plan::{MemRange, PlanInput},
};
use tdx_sim::{MachineDesc, Simulator};

fn main() {
    let sim = Simulator::new(MachineDesc::new(vec![(1 << 32, 1 << 33)])).unwrap();
    let input = PlanInput::new(vec![MemRange {
        start: 1 << 32,
        end: 1 << 33,
        node: 0,
    }]);
    let module = TdxModule::init(&sim, &sim).unwrap();
    let configured = module.configure(&input).unwrap();
    let _ = configured.configure(&input);
}
