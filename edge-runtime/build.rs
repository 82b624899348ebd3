//! With the `rknn` feature, librknnrt.so is linked at build time: `RKNN_LIB_DIR` names the
//! folder that holds it (a board's /usr/lib copied into a cross sysroot, say).
fn main() {
    println!("cargo:rerun-if-env-changed=RKNN_LIB_DIR");
    if std::env::var_os("CARGO_FEATURE_RKNN").is_some() {
        if let Some(dir) = std::env::var_os("RKNN_LIB_DIR") {
            println!("cargo:rustc-link-search=native={}", dir.to_string_lossy());
        }
    }
}
