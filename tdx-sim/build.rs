//! Declares the `loom` cfg, under which the lock algorithms are
//! model-checked (`RUSTFLAGS="--cfg loom" cargo test -p tdx-sim --lib --release loom`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
