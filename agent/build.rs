//! Builds the eBPF probes (ebpf/) with nightly and bpf-linker, and leaves the
//! object in OUT_DIR for `include_bytes_aligned!`.

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "zerospan-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
