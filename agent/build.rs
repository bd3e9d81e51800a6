//! Builds the eBPF probes (ebpf/) with nightly and bpf-linker, and leaves the
//! object in OUT_DIR for `include_bytes_aligned!`.

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    // The probes share `common` with the agent (layouts, counters, bounds):
    // a change there alone must rebuild them too, or the two disagree.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../common/src")
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "zerospan-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
