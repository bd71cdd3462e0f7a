//! Writes `tests/vectors/*.json` (see `hrx_tests::generate`).
//!
//! Run: `cargo run -p hrx-tests --bin gen-vectors`. The vector test fails when the files
//! on disk differ from what this writes.

fn main() -> anyhow::Result<()> {
    let dir = hrx_tests::vectors::dir();
    let files = hrx_tests::generate::files()?;
    for (name, text) in &files {
        std::fs::write(dir.join(name), text)?;
    }
    println!("{} files written to {}", files.len(), dir.display());
    Ok(())
}
