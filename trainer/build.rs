//! Embeds the LibTorch library folder as an rpath, so that `voxel-trainer` runs without
//! `LD_LIBRARY_PATH` on the machine that built it (container images set the path instead).

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    }
}
