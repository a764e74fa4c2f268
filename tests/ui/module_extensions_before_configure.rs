// Guarantee: the Extensions cannot be initialized before the TDMRs are
// configured. `init_extensions` exists only on `TdxModule<TdmrsSet, ..>`;
// an `Unconfigured` module has no PAMTs for the module to check pool pages
// against.
use tdx::api::TdxModule;
use tdx_sim::{MachineDesc, Simulator};

fn main() {
    let sim = Simulator::new(MachineDesc::new(vec![(1 << 32, 1 << 33)])).unwrap();
    let module = TdxModule::init(&sim, &sim).unwrap();
    let _ = module.init_extensions();
}
