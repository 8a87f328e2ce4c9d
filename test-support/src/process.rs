//! Running a built binary as a test does: arguments in, standard input
//! written and closed, everything it printed and its exit status out.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `program` with `args`, writes `stdin` to its standard input, closes
/// it, and waits for it to exit.
pub fn run_with_stdin(program: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}
