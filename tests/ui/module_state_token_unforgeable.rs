// Guarantee: bring-up states cannot be forged. The state markers have a
// private field, so code outside tdx-api cannot make one and claim a state
// the module never reached.
use tdx::api::{ExtInited, Unconfigured};

fn main() {
    let _ready = ExtInited(());
    let _fresh = Unconfigured(());
}
