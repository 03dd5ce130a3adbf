//! Compiles the eBPF programs (detector-ebpf) with nightly for the bpf target and
//! places the object in OUT_DIR, where `include_bytes_aligned!` picks it up.
fn main() -> anyhow::Result<()> {
    // cargo-fuzz builds (`--cfg fuzzing`) only analyse binaries and never load the
    // programs: embed an empty object instead of building them (no bpf-linker needed).
    println!("cargo:rerun-if-env-changed=CARGO_CFG_FUZZING");
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
        std::fs::write(out.join("detector-ebpf"), [])?;
        return Ok(());
    }
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
