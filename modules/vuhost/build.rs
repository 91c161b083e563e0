//! Exports the host symbols of the harness from the test executables, as umvu exports its
//! own (ENABLE_EXPORTS), so the modules' undefined imports resolve at dlopen.
fn main() {
    println!("cargo:rustc-link-arg-tests=-rdynamic");
}
