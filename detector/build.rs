//! Compiles the eBPF programs (detector-ebpf) with nightly for the bpf target and
//! places the object in OUT_DIR, where `include_bytes_aligned!` picks it up.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../detector-ebpf");
    let ebpf = aya_build::Package {
        name: "detector-ebpf",
        root_dir: root,
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([ebpf], aya_build::Toolchain::default()) {
        // Say what to do, not only what failed: the usual cause is a missing bpf-linker.
        anyhow::bail!("building the eBPF programs failed ({e:#}); run `cargo xtask setup` and build through `cargo xtask`, or put bpf-linker on PATH");
    }
    Ok(())
}
