// Guarantee: code that needs a ready module says so in its type, and an
// `Unconfigured` module (no TDMRs, no keys, no extensions) cannot be passed
// where a `TdxModule<ExtInited, ..>` is required.
use tdx::api::{ExtInited, TdxModule};
use tdx_sim::{MachineDesc, Simulator};

fn create_td<B, P>(_module: &TdxModule<ExtInited, B, P>) {}

fn main() {
    let sim = Simulator::new(MachineDesc::new(vec![(1 << 32, 1 << 33)])).unwrap();
    let module = TdxModule::init(&sim, &sim).unwrap();
    create_td(&module);
}
