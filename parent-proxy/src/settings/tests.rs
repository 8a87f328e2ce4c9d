//! Unit tests of the settings: the TOML file and its checks.

use super::file::*;
use super::*;
use crate::audit::LogFormat;
use crate::measurements::AllowedImage;
use keybroker_common::kms::Operation;
use std::path::{Path, PathBuf};

#[test]
fn empty_file_gives_defaults() {
    let c = FileConfig::parse("").unwrap();
    assert_eq!(
        c.listen_address().unwrap(),
        Address::Vsock {
            cid: u32::MAX,
            port: 5000
        }
    );
    assert_eq!(c.server_limits().unwrap(), ServerLimits::default());
    let p = c.admission().unwrap();
    assert!(!p.dangerous_forward_without_recipient);
    assert!(p.allowed_keys.is_none() && p.allowed_operations.is_none());
    assert!(p.allowed_images.is_empty());
    assert!(!p.verifies_attestation());
    assert_eq!(c.kms_settings(), KmsSettings::default());
    assert_eq!(c.tunnel_settings().unwrap(), TunnelSettings::default());
    assert!(c.tunnel_settings().unwrap().allowed.is_empty());
    assert_eq!(c.credentials.enabled, None);
}

#[test]
fn listen_and_limit_keys_parse() {
    let c = FileConfig::parse(
        "listen = \"tcp://0.0.0.0:5000\"\nallow_non_loopback = true\n\
         [limits]\nmax_kms_in_flight = 9\n",
    )
    .unwrap();
    assert_eq!(c.allow_non_loopback, Some(true));
    assert_eq!(c.server_limits().unwrap().max_kms_in_flight, 9);
    assert_eq!(
        ServerLimits::default().max_kms_in_flight,
        DEFAULT_MAX_KMS_IN_FLIGHT
    );
    let c = FileConfig::parse("[limits]\nmax_kms_in_flight = 0\n").unwrap();
    assert!(c.server_limits().is_err());
    assert!(FileConfig::parse("allow_non_loopback = \"yes\"\n").is_err());
}

#[test]
fn tunnel_section_parses() {
    let c = FileConfig::parse(
        "[tunnel]\nallowed = [\"kms-fips.us-east-1.amazonaws.com:443\", \"LOCALHOST:4566\"]\n\
         max_tunnels = 8\nidle_timeout_ms = 1500\nconnect_timeout_ms = 250\n\
         [credentials]\nenabled = false\n",
    )
    .unwrap();
    let t = c.tunnel_settings().unwrap();
    assert!(t.allows("kms-fips.us-east-1.amazonaws.com", 443));
    assert!(t.allows("localhost", 4566));
    assert!(!t.allows("localhost", 443));
    assert_eq!(t.max_tunnels, 8);
    assert_eq!(t.idle_timeout, Duration::from_millis(1500));
    assert_eq!(t.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.credentials.enabled, Some(false));
    for bad in [
        "[tunnel]\nallowed = [\"no-port\"]\n",
        "[tunnel]\nallowed = [\"bad_host:443\"]\n",
        "[tunnel]\nmax_tunnels = 0\n",
        "[tunnel]\nidle_timeout_ms = 0\n",
    ] {
        assert!(
            FileConfig::parse(bad).unwrap().tunnel_settings().is_err(),
            "{bad}"
        );
    }
    assert!(FileConfig::parse("[tunnel]\nallow = []\n").is_err());
    assert!(FileConfig::parse("[credentials]\nenable = true\n").is_err());
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    assert!(FileConfig::parse("[policy]\nrequire_recipent = false\n").is_err());
    assert!(FileConfig::parse("lisen = \"tcp://x:1\"\n").is_err());
    let c = FileConfig::parse("[policy]\nallowed_operations = [\"Encrypt\"]\n").unwrap();
    assert!(c.admission().unwrap_err().to_string().contains("Encrypt"));
    let c = FileConfig::parse("[policy.expected_pcrs]\n0 = \"abcd\"\n").unwrap();
    assert!(c.admission().is_err());
    let c = FileConfig::parse("[policy.expected_pcrs]\n32 = \"\"\n").unwrap();
    assert!(c.admission().is_err());
    let c = FileConfig::parse("[limits]\nmax_connections = 0\n").unwrap();
    assert!(c.server_limits().is_err());
    let c = FileConfig::parse("[limits]\nmax_frame_len = 99999999\n").unwrap();
    assert!(c.server_limits().is_err());
    let c = FileConfig::parse("[policy]\nattestation_roots = [\"/nonexistent.pem\"]\n").unwrap();
    assert!(matches!(c.admission(), Err(Error::File { .. })));
    let c = FileConfig::parse("listen = \"http://x:1\"\n").unwrap();
    assert!(c.listen_address().is_err());
}

const A0: &str = "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0";
const A2: &str = "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";
const B0: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";

fn images_of(toml: &str) -> Result<Vec<AllowedImage>> {
    FileConfig::parse(toml)?
        .admission()
        .map(|p| p.allowed_images)
}

/// The original single-image table still works (any PCR index, `0` or
/// `PCR0` spelling): one image with exactly those PCRs.
#[test]
fn single_image_table_is_one_image() {
    let images = images_of(&format!(
        "[policy.expected_pcrs]\n0 = \"{A0}\"\nPCR2 = \"{A2}\"\n"
    ))
    .unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].name(), None);
    assert_eq!(
        images[0].pcrs(),
        &[(0, vec![0xa0; 48]), (2, vec![0xa2; 48])].into()
    );
    // An empty table checks nothing, as before.
    assert!(images_of("[policy.expected_pcrs]\n").unwrap().is_empty());
    // The same index twice.
    let err = images_of(&format!(
        "[policy.expected_pcrs]\n0 = \"{A0}\"\nPCR0 = \"{B0}\"\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("PCR0 twice"), "{err}");
}

#[test]
fn allowed_images_tables_parse() {
    let images = images_of(&format!(
        "[[policy.allowed_images]]\nname = \"v1\"\npcr0 = \"{A0}\"\npcr2 = \"{A2}\"\n\
         [[policy.allowed_images]]\nPCR0 = \"{B0}\"\n"
    ))
    .unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].name(), Some("v1"));
    assert_eq!(
        images[0].pcrs(),
        &[(0, vec![0xa0; 48]), (2, vec![0xa2; 48])].into()
    );
    assert_eq!(images[1].name(), None);
    assert_eq!(images[1].pcrs(), &[(0, vec![0xb0; 48])].into());
    assert_eq!(images[1].label(), "PCR0 b0b0b0b0b0b0b0b0…");
}

#[test]
fn bad_allowed_images_are_errors() {
    let zeros = "00".repeat(48);
    for (toml, expect) in [
        // PCR0 is required (the key policy names it).
        (format!("pcr2 = \"{A2}\""), "pcr0 is required"),
        ("name = \"x\"".to_owned(), "pcr0 is required"),
        // Debug-mode values, in PCR0 or another PCR.
        (format!("pcr0 = \"{zeros}\""), "debug-mode"),
        (format!("pcr0 = \"{A0}\"\npcr8 = \"{zeros}\""), "debug-mode"),
        // Typos are not ignored.
        (
            format!("pcr0 = \"{A0}\"\nnmae = \"x\""),
            "unknown key \"nmae\"",
        ),
        (format!("pcr0 = \"{A0}\"\npcr = \"{A2}\""), "not 0..=31"),
        (format!("pcr0 = \"{A0}\"\npcr32 = \"{A2}\""), "not 0..=31"),
        (
            format!("pcr0 = \"{A0}\"\nPCR0 = \"{B0}\""),
            "PCR0 is given twice",
        ),
        ("pcr0 = \"abcd\"".to_owned(), "2 bytes"),
        (format!("pcr0 = \"{A0}\"\nname = \"\""), "image name"),
    ] {
        let err = images_of(&format!("[[policy.allowed_images]]\n{toml}\n")).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("policy.allowed_images[0]: "), "{err}");
        assert!(err.contains(expect), "{toml}: {err}");
    }
    // A non-string value.
    assert!(FileConfig::parse("[[policy.allowed_images]]\npcr0 = 1\n").is_err());
    // Two images with one name.
    let err = images_of(&format!(
        "[[policy.allowed_images]]\nname = \"v\"\npcr0 = \"{A0}\"\n\
         [[policy.allowed_images]]\nname = \"v\"\npcr0 = \"{B0}\"\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("named \"v\""), "{err}");
    // Both forms at once.
    let err = images_of(&format!(
        "[policy.expected_pcrs]\n0 = \"{A0}\"\n[[policy.allowed_images]]\npcr0 = \"{B0}\"\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("not both"), "{err}");
}

#[test]
fn allow_image_json_reads_nitro_cli_output() {
    let dir = std::env::temp_dir().join(format!("keybroker-image-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("new-pcrs.json");
    std::fs::write(
        &good,
        format!(
            "Start building the Enclave Image...\n{{\"Measurements\": {{\"HashAlgorithm\": \
             \"Sha384 {{ ... }}\", \"PCR0\": \"{A0}\", \"PCR2\": \"{A2}\"}}}}\n"
        ),
    )
    .unwrap();
    let debug = dir.join("debug.json");
    std::fs::write(
        &debug,
        format!(
            "{{\"Measurements\": {{\"PCR0\": \"{}\"}}}}",
            "00".repeat(48)
        ),
    )
    .unwrap();
    let image = load_image_json(&good);
    let refused = load_image_json(&debug);
    let missing = load_image_json(&dir.join("absent.json"));
    let _ = std::fs::remove_dir_all(&dir);
    let image = image.unwrap();
    assert_eq!(image.name(), Some("new-pcrs.json"));
    assert_eq!(
        image.pcrs(),
        &[(0, vec![0xa0; 48]), (2, vec![0xa2; 48])].into()
    );
    let err = refused.unwrap_err().to_string();
    assert!(err.contains("debug.json: PCR0 is all zeros"), "{err}");
    assert!(matches!(missing, Err(Error::File { .. })));
}

/// Relative `attestation_roots` are relative to the configuration file
/// (the shipped example names none any more, so this is tested here).
#[test]
fn relative_roots_resolve_against_the_file() {
    let dir = std::env::temp_dir().join(format!("keybroker-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        "[policy]\nattestation_roots = [\"dev-root.pem\", \"/abs/root.pem\"]\n",
    )
    .unwrap();
    let c = FileConfig::load(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        c.policy.attestation_roots.unwrap(),
        [dir.join("dev-root.pem"), PathBuf::from("/abs/root.pem")]
    );
}

/// The shipped example configuration parses and builds (so it never
/// rots), and is fit for production: no development attestation root,
/// no debug-mode (all-zero) PCR.
#[test]
fn example_config_parses() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/proxy.toml"));
    let c = FileConfig::load(path).unwrap();
    assert_eq!(
        c.listen_address().unwrap(),
        "vsock://4294967295:5000".parse().unwrap()
    );
    let limits = c.server_limits().unwrap();
    assert_eq!(limits.max_in_flight_per_connection, 128);
    assert_eq!(limits.max_kms_in_flight, 512);
    assert_eq!(c.allow_non_loopback, None);
    let kms = c.kms_settings();
    assert_eq!(kms.region.as_deref(), Some("us-east-1"));
    assert_eq!(c.log_format, Some(LogFormat::Json));
    assert_eq!(c.policy.attestation_roots, None);
    let p = c.admission().unwrap();
    assert_eq!(p.allowed_images.len(), 1);
    let image = &p.allowed_images[0];
    assert_eq!(image.name(), Some("keybroker 0.1.0"));
    assert_eq!(image.pcrs().keys().copied().collect::<Vec<_>>(), [0]);
    assert_eq!(image.pcrs()[&0].len(), 48);
    assert!(image.pcrs()[&0].iter().any(|b| *b != 0));
    assert!(
        p.allowed_operations
            .unwrap()
            .contains(&Operation::GenerateDataKey)
    );
    assert!(p.allowed_keys.unwrap().contains("alias/keybroker-demo"));
    assert_eq!(p.max_request_len, Some(65536));
    assert_eq!(
        p.max_document_age,
        crate::admission::DEFAULT_MAX_DOCUMENT_AGE
    );
    assert!(!p.dangerous_forward_without_recipient);
    let t = c.tunnel_settings().unwrap();
    assert_eq!(t.max_tunnels, 64);
    assert!(t.allows("kms-fips.us-east-1.amazonaws.com", 443));
    assert_eq!(c.credentials.enabled, Some(true));
}

#[test]
fn a_bare_metrics_port_is_loopback() {
    assert_eq!(
        parse_metrics_listen("9464").unwrap(),
        "127.0.0.1:9464".parse().unwrap()
    );
    assert_eq!(
        parse_metrics_listen("0.0.0.0:9464").unwrap(),
        "0.0.0.0:9464".parse().unwrap()
    );
    assert_eq!(
        parse_metrics_listen("[::1]:9464").unwrap(),
        "[::1]:9464".parse().unwrap()
    );
    for bad in [
        "",
        "65536",
        "localhost:9464",
        "127.0.0.1",
        ":9464",
        "tcp://127.0.0.1:1",
    ] {
        assert!(parse_metrics_listen(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_metrics_flag_overrides_the_file() {
    let dir = std::env::temp_dir().join(format!("keybroker-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        "metrics_listen = \"0.0.0.0:9464\"\nready_requires_enclave = true\n",
    )
    .unwrap();
    let from_file = ServeSettings::resolve(&Overrides {
        config: Some(path.clone()),
        ..Overrides::default()
    })
    .unwrap();
    assert_eq!(
        from_file.metrics_listen,
        Some("0.0.0.0:9464".parse().unwrap())
    );
    assert!(from_file.ready_requires_enclave);
    let flag = ServeSettings::resolve(&Overrides {
        config: Some(path.clone()),
        metrics_listen: Some("9465".into()),
        ..Overrides::default()
    })
    .unwrap();
    assert_eq!(flag.metrics_listen, Some("127.0.0.1:9465".parse().unwrap()));
    let none = ServeSettings::resolve(&Overrides::default()).unwrap();
    assert_eq!(none.metrics_listen, None);
    assert!(!none.ready_requires_enclave);
    let flag_only = ServeSettings::resolve(&Overrides {
        ready_requires_enclave: true,
        ..Overrides::default()
    })
    .unwrap();
    assert!(flag_only.ready_requires_enclave);
    std::fs::write(&path, "metrics_listen = \"somewhere\"\n").unwrap();
    assert!(
        ServeSettings::resolve(&Overrides {
            config: Some(path.clone()),
            ..Overrides::default()
        })
        .is_err()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
