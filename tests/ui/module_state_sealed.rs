// Guarantee: the set of bring-up states is closed. `ModuleState` is sealed,
// so code outside tdx-api cannot add a state of its own and give a module
// handle a state its transitions never produce.
use tdx::api::module::ModuleState;

#[derive(Debug)]
pub struct Ready;

impl ModuleState for Ready {}

fn main() {}
