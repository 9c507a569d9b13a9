//! The shipped systemd unit (`deploy/ryzanstein.service`) and settings file
//! (`deploy/serve.toml`): the unit passes `systemd-analyze verify` with no warning and keeps
//! its hardening (`systemd-analyze security`), and the binary accepts the settings file.
//!
//! `systemd-analyze verify` checks that ExecStart's binary exists, so the test puts the
//! binary under test in place of /usr/local/bin/ryzanstein. Skipped (with a message) where
//! systemd-analyze is missing (the Debian package `systemd` provides it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// ExecStart's binary in the shipped unit.
const UNIT_BINARY: &str = "/usr/local/bin/ryzanstein";
/// Highest overall exposure `systemd-analyze security` may give the unit, in tenths (its
/// `--threshold` unit): 2.0 of 10 ("OK"; a unit without hardening scores 9.6 "UNSAFE").
const EXPOSURE_MAX_TENTHS: u32 = 20;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn systemd_analyze() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join("systemd-analyze"))
        .find(|p| p.is_file())
}

/// The unit with the test binary as ExecStart's, in a fresh directory (the file name is the
/// unit's name, which verify checks too).
fn templated_unit() -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(repo_file("deploy/ryzanstein.service")).expect("unit");
    assert_eq!(
        text.matches(UNIT_BINARY).count(),
        1,
        "ExecStart names {UNIT_BINARY}"
    );
    let dir = std::env::temp_dir().join(format!("ryz-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let unit = dir.join("ryzanstein.service");
    let text = text.replace(UNIT_BINARY, env!("CARGO_BIN_EXE_ryzanstein"));
    std::fs::write(&unit, text).expect("write the unit");
    (dir, unit)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run systemd-analyze")
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (Debian package systemd); \
             deploy/ryzanstein.service was not verified"
        );
        return;
    };
    let (dir, unit) = templated_unit();
    let out = run(Command::new(&analyze).arg("verify").arg(&unit));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown or malformed settings too, with a warning on stderr: any
    // output is a failure.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{stderr}",
        out.status
    );

    let out = run(Command::new(&analyze)
        .args(["security", "--offline=true"])
        .arg(format!("--threshold={EXPOSURE_MAX_TENTHS}"))
        .arg(&unit));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let overall = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("");
    eprintln!("systemd-analyze security: {}", overall.trim());
    if overall.is_empty() {
        eprintln!("(this systemd-analyze has no offline security analysis; skipped)");
    } else {
        assert!(
            out.status.success(),
            "exposure above {EXPOSURE_MAX_TENTHS}/100:\n{stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The settings file the unit points to is valid: every key known, values in range.
#[test]
fn the_shipped_settings_file_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_ryzanstein"))
        .args(["serve", "--print-config", "--config"])
        .arg(repo_file("deploy/serve.toml"))
        .env_remove("RYZANSTEIN_LISTEN")
        .env_remove("RYZANSTEIN_MODELS_DIR")
        .output()
        .expect("run the binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("models_dir = \"/var/lib/ryzanstein-models\""),
        "{stdout}"
    );
    // The proxy refuses what the replicas would: deploy/nginx.conf's body cap is the same.
    assert!(stdout.contains("body_bytes_max = 1048576"), "{stdout}");
    let nginx = std::fs::read_to_string(repo_file("deploy/nginx.conf")).expect("nginx.conf");
    assert!(
        nginx.contains("client_max_body_size 1m;"),
        "1m = 1048576 bytes"
    );
}
