//! `capnp-gen SCHEMA_DIR OUT_DIR`: compiles every schema of SCHEMA_DIR into OUT_DIR.
//! Run through `ci/gen-capnp`, which also checks freshness in CI.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [schema_dir, out_dir] = args.as_slice() else {
        eprintln!("usage: capnp-gen SCHEMA_DIR OUT_DIR");
        return ExitCode::from(2);
    };
    let schema_dir = PathBuf::from(schema_dir);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&schema_dir) {
        Ok(dir) => dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "capnp"))
            .collect(),
        Err(e) => {
            eprintln!("capnp-gen: cannot read {}: {e}", schema_dir.display());
            return ExitCode::FAILURE;
        }
    };
    files.sort();
    let mut cmd = capnpc::CompilerCommand::new();
    cmd.src_prefix(&schema_dir).output_path(out_dir);
    for f in &files {
        cmd.file(f);
    }
    match cmd.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capnp-gen: {e}");
            ExitCode::FAILURE
        }
    }
}
