//! thinclone development tasks.
fn main() {}
