//! Writes the fuzz targets' seed corpora from real traffic:
//! `fuzz-corpus <dir>` (run by `cargo xtask fuzz-corpus`, which passes
//! `fuzz/corpus`).

fn main() -> std::process::ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: fuzz-corpus <corpus dir>");
        return std::process::ExitCode::FAILURE;
    };
    match gossipkv_fuzz_targets::corpus::generate(std::path::Path::new(&dir)) {
        Ok(counts) => {
            for (target, n) in counts {
                println!("{target:<14} {n:>3} seeds");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
