//! `scripts/soak.sh` for a minute and a half: the same script as the 30-minute soak of
//! docs/OPERATIONS.md (probe, mixed open-loop load with cancellations, loads and evictions,
//! /proc sampling, SIGTERM), on the binary under test, so its code path stays covered.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The script bounds itself (its minute, 120 s to drain, 60 s for SIGTERM); this is the
/// test's own bound on top, after which it kills the script.
const TIME_MAX: Duration = Duration::from_secs(420);

#[test]
fn a_short_soak_passes() {
    let gemma = common::default_model_path();
    let mut child = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/soak.sh"))
        // Probe 8 s, warm-up 45 s (the shortest that covers the first rise of resident
        // memory), then ~37 s measured with a sample every 2 s.
        .args(["--minutes", "1.5", "--sample-s", "2"])
        .args(["--binary", env!("CARGO_BIN_EXE_ryzanstein")])
        .arg("--gemma")
        .arg(&gemma)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/soak.sh (needs bash and python3)");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if t0.elapsed() > TIME_MAX {
            // Our own child, by its pid (the script stops its server on SIGTERM).
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    eprintln!("{out}");
    let status = status.unwrap_or_else(|| panic!("the soak ran over {TIME_MAX:?}:\n{err}"));
    assert!(status.success(), "soak failed ({status}):\n{out}\n{err}");
    assert!(out.contains("verdict: PASS"), "{out}");
    assert!(
        out.contains(" cancelled by the client, 0 errors\n"),
        "{out}"
    );
    // The mix did exercise what it claims: cancellations, loads and evictions.
    let cancelled = number_before(&out, " cancelled by the client");
    let evictions = number_before(&out, " evictions");
    assert!(cancelled > 0 && evictions > 0, "{out}");
}

/// The integer just before `label` in `text`.
fn number_before(text: &str, label: &str) -> u64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?}: {text}"));
    let digits: String = text[..at]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}
