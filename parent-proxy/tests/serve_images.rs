//! How `serve` assembles the allowed enclave images from the configuration
//! file and the flags: `--pcr` keeps editing the single image of
//! `[policy.expected_pcrs]`; `--allow-image` and `--allow-image-json` add
//! images; the two styles are never silently mixed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use keybroker_proxy::cli::{Cli, Command, ServeArgs, serve_settings};
use keybroker_proxy::measurements::AllowedImage;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/proxy.toml");

fn hex48(b: u8) -> String {
    hex::encode([b; 48])
}

fn pcrs(entries: &[(u8, u8)]) -> BTreeMap<u8, Vec<u8>> {
    entries.iter().map(|(i, b)| (*i, vec![*b; 48])).collect()
}

fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
    let argv = ["keybroker-proxy", "serve"].iter().chain(args);
    match Cli::try_parse_from(argv)?.command {
        Command::Serve(args) => Ok(*args),
        other => panic!("{other:?}"),
    }
}

/// The images `serve` would admit with these flags.
fn images(args: &[&str]) -> keybroker_proxy::Result<Vec<AllowedImage>> {
    let args = parse(args).unwrap();
    serve_settings(&args).map(|s| s.proxy.admission.allowed_images)
}

/// A scratch directory for configuration and nitro-cli files.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("serve_images-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

#[test]
fn pcr_flags_make_one_image() {
    let got = images(&[
        "--pcr",
        &format!("0={}", hex48(0xA0)),
        "--pcr",
        &format!("PCR2={}", hex48(0xA2)),
    ])
    .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].pcrs(), &pcrs(&[(0, 0xA0), (2, 0xA2)]));
}

/// As before this change: a `--pcr` flag overrides the same index of the
/// file's `[policy.expected_pcrs]` and keeps the other indices.
#[test]
fn pcr_flags_edit_the_files_single_image() {
    let dir = Dir::new("single");
    let config = dir.file(
        "proxy.toml",
        &format!(
            "[policy.expected_pcrs]\n0 = \"{}\"\n1 = \"{}\"\n",
            hex48(0x10),
            hex48(0x11)
        ),
    );
    let got = images(&["--config", &config]).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].pcrs(), &pcrs(&[(0, 0x10), (1, 0x11)]));

    let got = images(&["--config", &config, "--pcr", &format!("0={}", hex48(0x20))]).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].pcrs(), &pcrs(&[(0, 0x20), (1, 0x11)]));

    // --allow-image adds an image beside the file's single one.
    let got = images(&[
        "--config",
        &config,
        "--allow-image",
        &format!("pcr0={}", hex48(0x30)),
    ])
    .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].pcrs(), &pcrs(&[(0, 0x30)]));
}

#[test]
fn pcr_flags_are_refused_beside_an_image_list() {
    // On the command line: a usage error.
    let err = parse(&[
        "--pcr",
        &format!("0={}", hex48(0xA0)),
        "--allow-image",
        &format!("pcr0={}", hex48(0xB0)),
    ])
    .unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    assert!(
        parse(&[
            "--pcr",
            &format!("0={}", hex48(0xA0)),
            "--allow-image-json",
            "x.json"
        ])
        .is_err()
    );

    // With a file that lists images: which one would --pcr edit?
    let args = ["--config", EXAMPLE, "--pcr", &format!("0={}", hex48(0xA0))];
    let err = images(&args).unwrap_err().to_string();
    assert!(err.contains("use --allow-image"), "{err}");
}

/// The rollout on the command line: the shipped file's image plus the new
/// one, by value and from nitro-cli's JSON.
#[test]
fn allow_image_flags_add_to_the_files_images() {
    let dir = Dir::new("rollout");
    let json = dir.file(
        "v3-pcrs.json",
        &format!(
            "{{\"Measurements\": {{\"HashAlgorithm\": \"Sha384 {{ ... }}\", \"PCR0\": \"{}\", \
             \"PCR1\": \"{}\", \"PCR2\": \"{}\"}}}}",
            hex48(0x30),
            hex48(0x31),
            hex48(0x32)
        ),
    );
    let got = images(&[
        "--config",
        EXAMPLE,
        "--allow-image",
        &format!("name=v2,pcr0={},pcr2={}", hex48(0x20), hex48(0x22)),
        "--allow-image-json",
        &json,
    ])
    .unwrap();
    let names: Vec<_> = got.iter().map(|i| i.name().unwrap()).collect();
    assert_eq!(names, ["keybroker 0.1.0", "v2", "v3-pcrs.json"]);
    assert_eq!(got[1].pcrs(), &pcrs(&[(0, 0x20), (2, 0x22)]));
    assert_eq!(got[2].pcrs(), &pcrs(&[(0, 0x30), (1, 0x31), (2, 0x32)]));

    // A name already used by the file.
    let err = images(&[
        "--config",
        EXAMPLE,
        "--allow-image",
        &format!("name=keybroker 0.1.0,pcr0={}", hex48(0x20)),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("named \"keybroker 0.1.0\""), "{err}");

    // A nitro-cli file of a debug-mode build, or none at all.
    let zeros = dir.file(
        "debug.json",
        &format!(
            "{{\"Measurements\": {{\"PCR0\": \"{}\"}}}}",
            "00".repeat(48)
        ),
    );
    let err = images(&["--allow-image-json", &zeros])
        .unwrap_err()
        .to_string();
    assert!(err.contains("all zeros"), "{err}");
    let missing = Path::new(&dir.0).join("absent.json").display().to_string();
    assert!(images(&["--allow-image-json", &missing]).is_err());
}

#[test]
fn bad_allow_image_flags_are_usage_errors() {
    for value in [
        hex48(0xA0),                            // no KEY=
        format!("pcr2={}", hex48(0xA2)),        // no pcr0
        format!("pcr0={},nmae=x", hex48(0xA0)), // typo
        format!("pcr0={}", "ab".repeat(20)),    // wrong length
    ] {
        let err = parse(&["--allow-image", &value]).unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ValueValidation,
            "{value}: {err}"
        );
    }
}

/// `--tunnel`, `--max-tunnels` and `--no-credentials` reach the server
/// settings; `--tunnel` adds to the file's `[tunnel] allowed`.
#[test]
fn tunnel_and_credential_flags() {
    let args = parse(&[
        "--config",
        EXAMPLE,
        "--tunnel",
        "LocalHost:4566",
        "--tunnel",
        "[::1]:8443",
        "--max-tunnels",
        "3",
    ])
    .unwrap();
    let s = serve_settings(&args).unwrap();
    let t = &s.proxy.tunnels;
    assert!(t.allows("localhost", 4566));
    assert!(t.allows("::1", 8443));
    assert!(
        t.allows("kms-fips.us-east-1.amazonaws.com", 443),
        "the file's"
    );
    assert!(!t.allows("localhost", 443));
    assert_eq!(t.max_tunnels, 3);
    assert!(s.credentials);
    let s = serve_settings(&parse(&["--config", EXAMPLE, "--no-credentials"]).unwrap()).unwrap();
    assert!(!s.credentials);
    for bad in ["localhost", "bad_host:1", "h:0"] {
        assert!(parse(&["--tunnel", bad]).is_err(), "{bad}");
    }
}

/// `--max-document-age-ms` overrides `[policy] max_document_age_ms`; the
/// default is five minutes; zero is refused.
#[test]
fn max_document_age_flag_and_file_key() {
    use std::time::Duration;
    let age = |args: &[&str]| {
        serve_settings(&parse(args).unwrap()).map(|s| s.proxy.admission.max_document_age)
    };
    assert_eq!(age(&[]).unwrap(), Duration::from_secs(300));
    assert_eq!(
        age(&["--max-document-age-ms", "90000"]).unwrap(),
        Duration::from_secs(90)
    );
    let dir = Dir::new("document-age");
    let config = dir.file("proxy.toml", "[policy]\nmax_document_age_ms = 120000\n");
    assert_eq!(
        age(&["--config", &config]).unwrap(),
        Duration::from_secs(120)
    );
    assert_eq!(
        age(&["--config", &config, "--max-document-age-ms", "60000"]).unwrap(),
        Duration::from_secs(60)
    );
    let err = age(&["--max-document-age-ms", "0"]).unwrap_err();
    assert!(err.to_string().contains("max_document_age_ms"), "{err}");
}
