// Guarantee: only a ready module creates TDs: `TdHost` takes a
// `TdxModule<ExtInited, ..>`, and an unconfigured module is refused.
use tdx::api::{TdxModule, td::TdHost};
use tdx_sim::{MachineDesc, Simulator};

fn main() {
    let sim = Simulator::new(MachineDesc::new(vec![(1 << 32, 1 << 33)])).unwrap();
    let module = TdxModule::init(&sim, &sim).unwrap();
    let _host = TdHost::new(module);
}
