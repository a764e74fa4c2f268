// Guarantee: a `TdxModule` handle only comes from its transitions. Its
// fields are private, so code outside tdx-api cannot build a handle in any
// state (say, `ExtInited`) around a backend that never went through
// bring-up.
use core::marker::PhantomData;

use tdx::api::{ExtInited, TdxModule};
use tdx_sim::{MachineDesc, Simulator};

fn main() {
    let sim = Simulator::new(MachineDesc::new(vec![(1 << 32, 1 << 33)])).unwrap();
    let _module: TdxModule<ExtInited, &Simulator, &Simulator> = TdxModule {
        backend: &sim,
        platform: &sim,
        _state: PhantomData,
    };
}
