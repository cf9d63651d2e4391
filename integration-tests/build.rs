//! The C code of the native-crash helper node (`syncra-test-native`).
fn main() {
    println!("cargo:rerun-if-changed=csrc/native.c");
    cc::Build::new()
        .file("csrc/native.c")
        .flag_if_supported("-fno-omit-frame-pointer")
        .compile("syncra_native");
}
