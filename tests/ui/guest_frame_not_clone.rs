// Guarantee: a guest frame token is unique: it cannot be cloned, so the
// same frames cannot be handed to two mappings (or two TDs) safely.
use tdx::api::td::GuestFrame;
use tdx::Size4K;

fn twice(frame: GuestFrame<Size4K>) -> (GuestFrame<Size4K>, GuestFrame<Size4K>) {
    (frame.clone(), frame)
}

fn main() {}
