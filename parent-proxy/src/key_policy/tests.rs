use super::*;

const ROLE: &str = "arn:aws:iam::111122223333:role/keybroker-parent";
const ADMIN: &str = "arn:aws:iam::111122223333:role/KeyAdmins";

fn pcr(byte: u8) -> String {
    hex::encode([byte; PCR_LEN])
}

/// A `nitro-cli describe-eif` output for a signed image, written for this
/// test after the shape of nitro-cli's `EifDescribeInfo` (Measurements
/// flattened beside the other members) and AWS's documented example; the
/// PCR values are made up (repeated bytes), not from a real EIF.
const DESCRIBE_EIF_SIGNED: &str = r#"{
  "EifVersion": 4,
  "Measurements": {
"HashAlgorithm": "Sha384 { ... }",
"PCR0": "A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0",
"PCR1": "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
"PCR2": "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2",
"PCR8": "a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8"
  },
  "IsSigned": true,
  "SigningCertificate": {"IssuerName": {"commonName": "keybroker-test"}, "Algorithm": "ecdsa-with-SHA384"},
  "CheckCRC": true,
  "SignatureCheck": true,
  "ImageName": "keybroker-enclave",
  "ImageVersion": "0.1.0",
  "Metadata": {"BuildTime": "1970-01-01T00:00:00Z", "DockerInfo": {"Architecture": "amd64"}}
}"#;

/// `nitro-cli build-enclave` with both output streams captured: progress
/// lines, then the JSON (unsigned image: no PCR8). Written for this
/// test; values made up.
fn build_enclave_output() -> String {
    format!(
        "Start building the Enclave Image...\nUsing the locally available Docker image...\n\
         Enclave Image successfully created.\n{{\n  \"Measurements\": {{\n    \
         \"HashAlgorithm\": \"Sha384 {{ ... }}\",\n    \"PCR0\": \"{}\",\n    \"PCR1\": \"{}\",\n    \
         \"PCR2\": \"{}\"\n  }}\n}}\n",
        pcr(0xb0),
        pcr(0xb1),
        pcr(0xb2)
    )
}

#[test]
fn every_brokered_operation_is_covered_by_the_policy() {
    use keybroker_common::kms::Operation;
    for op in Operation::ALL {
        let action = format!("kms:{}", op.as_str());
        if op == Operation::GenerateRandom {
            // Key-less: IAM only (module docs).
            assert!(!PLAINTEXT_ACTIONS.contains(&action.as_str()));
        } else if op.returns_plaintext() {
            assert!(PLAINTEXT_ACTIONS.contains(&action.as_str()), "{action}");
        } else {
            assert!(
                WITHOUT_PLAINTEXT_ACTIONS.contains(&action.as_str()),
                "{action}"
            );
        }
    }
}

#[test]
fn pcr_values_are_validated_and_lower_cased() {
    let upper = pcr(0xab).to_uppercase();
    assert_eq!(
        ImageMeasurements::new(&format!("  {upper}\n"))
            .unwrap()
            .pcr0(),
        pcr(0xab)
    );
    let base = || ImageMeasurements::new(&pcr(0x77)).unwrap();
    let e = base()
        .with_pcr(1, &"ab".repeat(32))
        .unwrap_err()
        .to_string();
    assert!(e.contains("PCR1 is 32 bytes"), "{e}");
    let e = base()
        .with_pcr(2, &"zz".repeat(48))
        .unwrap_err()
        .to_string();
    assert!(e.contains("PCR2 is not hex"), "{e}");
    let e = ImageMeasurements::new(&pcr(0)).unwrap_err().to_string();
    assert!(e.contains("debug-mode"), "{e}");
    assert!(matches!(
        ImageMeasurements::new(""),
        Err(Error::KeyPolicy(_))
    ));
    let m = ImageMeasurements::new(&pcr(1)).unwrap();
    assert!(m.clone().with_pcr(0, &pcr(2)).is_err());
    assert!(m.clone().with_pcr(32, &pcr(2)).is_err());
    assert!(m.with_pcr(8, &pcr(0)).is_err());
}

#[test]
fn principals_are_validated() {
    for ok in [
        ROLE,
        "arn:aws:iam::111122223333:root",
        "arn:aws:iam::111122223333:user/alice",
        "arn:aws-us-gov:iam::111122223333:role/path/to/Role_1+=,.@-",
        "arn:aws-cn:iam::111122223333:role/x",
    ] {
        assert_eq!(IamPrincipal::parse(ok).unwrap().arn(), ok);
    }
    assert_eq!(IamPrincipal::parse(ROLE).unwrap().account(), "111122223333");
    for bad in [
        "",
        "keybroker-parent",
        "arn:aws:iam::1111:role/x",
        "arn:aws:iam::111122223333:role/",
        "arn:aws:iam::111122223333:role/*",
        "arn:aws:iam::111122223333:group/admins",
        "arn:aws:iam:us-east-1:111122223333:role/x",
        "arn:aws:s3:::bucket",
        "arn:gcp:iam::111122223333:role/x",
        "arn:aws:iam::111122223333:role/a b",
    ] {
        assert!(IamPrincipal::parse(bad).is_err(), "{bad}");
    }
    let e = IamPrincipal::parse("arn:aws:sts::111122223333:assumed-role/keybroker-parent/i-0abc")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("arn:aws:iam::111122223333:role/keybroker-parent"),
        "{e}"
    );
    assert!(
        IamPrincipal::parse(&format!(
            "arn:aws:iam::111122223333:role/{}",
            "x".repeat(2048)
        ))
        .is_err()
    );
}

#[test]
fn one_image_policy_has_the_documented_statements() {
    let image = ImageMeasurements::new(&pcr(0xa0))
        .unwrap()
        .with_pcr(2, &pcr(0xa2))
        .unwrap();
    let p = EnclaveKeyPolicy::new(ROLE, vec![image])
        .unwrap()
        .with_key_admin(ADMIN)
        .unwrap();
    let doc = p.document();
    let sids: Vec<&str> = doc.statement.iter().map(|s| s.sid.as_str()).collect();
    assert_eq!(
        sids,
        [
            "KeyAdministratorsManageTheKeyButCannotUseIt",
            "ParentMayCallOperationsThatReturnNoPlaintext",
            "PlaintextOnlyToAttestedEnclaveImage1",
            "DenyParentPlaintextUnlessAttestedImage",
            "DenyParentEncryptReEncryptAndGrants",
        ]
    );
    let json = doc.to_value().unwrap();
    assert_eq!(json["Version"], "2012-10-17");
    let st = &json["Statement"];
    // Administrators: management only, never a cryptographic operation
    // and never CreateGrant.
    assert_eq!(st[0]["Principal"]["AWS"], ADMIN);
    let admin_actions = st[0]["Action"].as_array().unwrap();
    assert!(admin_actions.contains(&"kms:Put*".into()));
    for forbidden in [
        "kms:Create*",
        "kms:*",
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "kms:Encrypt",
    ] {
        assert!(!admin_actions.contains(&forbidden.into()), "{forbidden}");
    }
    // The without-plaintext operations: no condition.
    assert_eq!(st[1]["Principal"]["AWS"], ROLE);
    assert!(st[1].get("Condition").is_none());
    assert_eq!(
        st[1]["Action"],
        serde_json::json!(WITHOUT_PLAINTEXT_ACTIONS)
    );
    // Plaintext only with all given PCRs.
    assert_eq!(st[2]["Effect"], "Allow");
    assert_eq!(st[2]["Action"], serde_json::json!(PLAINTEXT_ACTIONS));
    assert_eq!(
        st[2]["Condition"],
        serde_json::json!({"StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:ImageSha384": pcr(0xa0),
            "kms:RecipientAttestation:PCR2": pcr(0xa2),
        }})
    );
    // The explicit deny without (or with another) attestation.
    assert_eq!(st[3]["Effect"], "Deny");
    assert_eq!(st[3]["Principal"]["AWS"], ROLE);
    assert_eq!(st[3]["Action"], serde_json::json!(PLAINTEXT_ACTIONS));
    assert_eq!(
        st[3]["Condition"],
        serde_json::json!({"StringNotEqualsIgnoreCase": {
            "kms:RecipientAttestation:ImageSha384": pcr(0xa0)}})
    );
    assert_eq!(st[4]["Effect"], "Deny");
    assert!(st[4].get("Condition").is_none());
    // Never the account-wide delegation to IAM.
    for s in st.as_array().unwrap() {
        assert_ne!(s["Action"], "kms:*");
        assert_ne!(s["Principal"]["AWS"], "arn:aws:iam::111122223333:root");
    }
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    // Pretty output keeps the conventional member order.
    let text = doc.to_json_pretty().unwrap();
    let (v, s) = (
        text.find("\"Version\"").unwrap(),
        text.find("\"Statement\"").unwrap(),
    );
    assert!(v < s);
    let (sid, cond) = (
        text.find("\"Sid\"").unwrap(),
        text.find("\"Effect\"").unwrap(),
    );
    assert!(sid < cond);
}

#[test]
fn rollout_policy_has_one_allow_per_image_and_one_deny_for_both() {
    let old = ImageMeasurements::new(&pcr(0x01))
        .unwrap()
        .with_pcr(1, &pcr(0x11))
        .unwrap();
    let new = ImageMeasurements::new(&pcr(0x02))
        .unwrap()
        .with_pcr(1, &pcr(0x12))
        .unwrap();
    let doc = EnclaveKeyPolicy::new(ROLE, vec![old, new])
        .unwrap()
        .with_key_admin(ADMIN)
        .unwrap()
        .document();
    let first = doc
        .statement("PlaintextOnlyToAttestedEnclaveImage1")
        .unwrap();
    let second = doc
        .statement("PlaintextOnlyToAttestedEnclaveImage2")
        .unwrap();
    let cond = |s: &PolicyStatement, key: &str| {
        s.condition.as_ref().unwrap()["StringEqualsIgnoreCase"][key]
            .values()
            .join(",")
    };
    assert_eq!(cond(first, IMAGE_SHA384_KEY), pcr(0x01));
    assert_eq!(cond(first, "kms:RecipientAttestation:PCR1"), pcr(0x11));
    assert_eq!(cond(second, IMAGE_SHA384_KEY), pcr(0x02));
    assert_eq!(cond(second, "kms:RecipientAttestation:PCR1"), pcr(0x12));
    let deny = doc
        .statement("DenyParentPlaintextUnlessAttestedImage")
        .unwrap();
    assert_eq!(
        deny.condition.as_ref().unwrap()["StringNotEqualsIgnoreCase"][IMAGE_SHA384_KEY].values(),
        [pcr(0x01), pcr(0x02)]
    );
}

#[test]
fn admins_default_to_the_key_account_root_and_warnings_say_so() {
    let image = || vec![ImageMeasurements::new(&pcr(7)).unwrap()];
    let p = EnclaveKeyPolicy::new(ROLE, image()).unwrap();
    assert_eq!(p.admin_arns(), ["arn:aws:iam::111122223333:root"]);
    assert_eq!(p.warnings().len(), 1);
    let p = p.with_account_id("444455556666").unwrap();
    assert_eq!(p.admin_arns(), ["arn:aws:iam::444455556666:root"]);
    assert!(
        p.warnings()
            .iter()
            .any(|w| w.contains("IAM policy in its own account"))
    );
    assert!(
        EnclaveKeyPolicy::new(ROLE, image())
            .unwrap()
            .with_account_id("12")
            .is_err()
    );
    let gov = EnclaveKeyPolicy::new("arn:aws-us-gov:iam::111122223333:role/p", image()).unwrap();
    assert_eq!(gov.admin_arns(), ["arn:aws-us-gov:iam::111122223333:root"]);
    // Several admins, duplicates once.
    let p = EnclaveKeyPolicy::new(ROLE, image())
        .unwrap()
        .with_key_admin(ADMIN)
        .unwrap()
        .with_key_admin("arn:aws:iam::111122223333:user/ops")
        .unwrap()
        .with_key_admin(ADMIN)
        .unwrap();
    assert_eq!(p.admin_arns().len(), 2);
    let doc = p.document();
    assert_eq!(doc.statement[0].principal.aws.values().len(), 2);
}

#[test]
fn the_parent_cannot_administer_the_key() {
    let image = vec![ImageMeasurements::new(&pcr(7)).unwrap()];
    let e = EnclaveKeyPolicy::new(ROLE, image.clone())
        .unwrap()
        .with_key_admin(ROLE)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot also administer"), "{e}");
    // An account root as both (the mock KMS's single caller) is allowed,
    // with a warning.
    let root = "arn:aws:iam::111122223333:root";
    let p = EnclaveKeyPolicy::new(root, image)
        .unwrap()
        .with_key_admin(root)
        .unwrap();
    assert!(p.warnings().iter().any(|w| w.contains("account root")));
    assert!(EnclaveKeyPolicy::new(ROLE, Vec::new()).is_err());
}

#[test]
fn nitro_cli_describe_eif_output_is_read() {
    let m = ImageMeasurements::from_nitro_cli_json(DESCRIBE_EIF_SIGNED).unwrap();
    let pcrs: Vec<(u8, String)> = m.pcrs().map(|(i, v)| (i, v.to_owned())).collect();
    assert_eq!(
        pcrs,
        [
            (0, pcr(0xa0)),
            (1, pcr(0xa1)),
            (2, pcr(0xa2)),
            (8, pcr(0xa8))
        ]
    );
    assert_eq!(m.pcr0(), pcr(0xa0));
}

#[test]
fn nitro_cli_build_enclave_output_with_progress_lines_is_read() {
    let m = ImageMeasurements::from_nitro_cli_json(&build_enclave_output()).unwrap();
    let indices: Vec<u8> = m.pcrs().map(|(i, _)| i).collect();
    assert_eq!(indices, [0, 1, 2]);
    // The Measurements object alone (what some pipelines store).
    let bare = format!("{{\"PCR0\": \"{}\"}}", pcr(0xc0));
    assert_eq!(
        ImageMeasurements::from_nitro_cli_json(&bare)
            .unwrap()
            .pcr0(),
        pcr(0xc0)
    );
}

#[test]
fn bad_nitro_cli_output_is_refused() {
    let with = |from: &str, to: &str| DESCRIBE_EIF_SIGNED.replace(from, to);
    for (text, needle) in [
        (
            with("\"CheckCRC\": true", "\"CheckCRC\": false"),
            "CheckCRC",
        ),
        (
            with("\"SignatureCheck\": true", "\"SignatureCheck\": false"),
            "SignatureCheck",
        ),
        (with("Sha384 { ... }", "Sha256 { ... }"), "HashAlgorithm"),
        (with("\"PCR0\"", "\"PCRX\""), "unknown measurement"),
        (with("\"PCR0\"", "\"Other\""), "no PCR0"),
        (with(&"A0".repeat(48), &"A0".repeat(47)), "PCR0 is 47 bytes"),
        (
            "Enclave Image successfully created.\n".to_owned(),
            "no JSON",
        ),
        ("{\"Measurements\": 3}".to_owned(), "not a JSON object"),
        ("{not json".to_owned(), "not valid JSON"),
        (format!("{{\"PCR0\": \"{}\"}}", pcr(0)), "debug-mode"),
        (
            format!("{{\"PCR0\": \"{}\", \"PCR1\": 5}}", pcr(1)),
            "PCR1 is not a string",
        ),
    ] {
        let e = ImageMeasurements::from_nitro_cli_json(&text)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
    let huge = " ".repeat(MAX_NITRO_CLI_JSON_LEN + 1);
    assert!(ImageMeasurements::from_nitro_cli_json(&huge).is_err());
}
