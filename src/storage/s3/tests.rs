//! Unit tests of the S3 backend's configuration and error handling.

use super::*;

fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn bucket_specs() {
    let c = S3Config::from_spec_with_env("s3://b-1/a/b/", &S3Options::default(), env(&[])).unwrap();
    assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("b-1", "a/b"));
    assert_eq!(c.url(), "s3://b-1/a/b");
    let c = S3Config::from_spec_with_env("mybucket", &S3Options::default(), env(&[])).unwrap();
    assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("mybucket", ""));
    for bad in [
        "gs://x/y",
        "a/b",
        "s3://x",
        "s3:///p",
        "s3://b-1/a/../b",
        "",
    ] {
        assert!(
            S3Config::from_spec_with_env(bad, &S3Options::default(), env(&[])).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn environment_and_flags() {
    let vars = [
        ("AWS_ENDPOINT_URL", "http://other:1"),
        ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:3900/"),
        ("AWS_DEFAULT_REGION", "eu-west-1"),
        ("AWS_REGION", "garage"),
        ("AWS_ACCESS_KEY_ID", "GK1"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("AWS_SESSION_TOKEN", ""),
    ];
    let c = S3Config::from_spec_with_env("bkt", &S3Options::default(), env(&vars)).unwrap();
    assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
    assert_eq!(c.region.as_deref(), Some("garage"));
    assert!(c.path_style);
    let creds = c.credentials.unwrap();
    assert_eq!(creds.session_token, None);
    assert!(!format!("{creds:?}").contains("\"s\""));

    let opts = S3Options {
        endpoint: Some("s3.example.com".into()),
        region: Some("auto".into()),
        path_style: Some(false),
    };
    let c = S3Config::from_spec_with_env("bkt", &opts, env(&vars)).unwrap();
    assert_eq!(c.endpoint.as_deref(), Some("https://s3.example.com"));
    assert_eq!(c.region.as_deref(), Some("auto"));
    assert!(!c.path_style);

    assert_eq!(c.ca_bundle, None);
    let with_ca = [("AWS_CA_BUNDLE", "/etc/walsync/ca.pem")];
    let c = S3Config::from_spec_with_env("bkt", &S3Options::default(), env(&with_ca)).unwrap();
    assert_eq!(c.ca_bundle, Some("/etc/walsync/ca.pem".into()));

    let c = S3Config::from_spec_with_env("bkt", &S3Options::default(), env(&[])).unwrap();
    assert_eq!((c.endpoint, c.region, c.path_style), (None, None, false));
    assert!(S3Config::from_spec_with_env(
        "bkt",
        &S3Options::default(),
        env(&[("AWS_ACCESS_KEY_ID", "x")])
    )
    .is_err());
}

#[test]
fn error_classification() {
    let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code>\
                <Message>Bucket not found: x</Message></Error>";
    let (kind, msg) = classify(&S3Error::HttpFailWithBody(404, body.into()), "e");
    assert_eq!(kind, StorageErrorKind::NoSuchBucket);
    assert_eq!(msg, "HTTP 404 NoSuchBucket: Bucket not found: x");
    let body = "<Error><Code>AuthorizationHeaderMalformed</Code><Message>unexpected \
                scope: &apos;us-east-1&apos;</Message></Error>";
    let (kind, msg) = classify(&S3Error::HttpFailWithBody(400, body.into()), "e");
    assert_eq!(kind, StorageErrorKind::Other);
    assert_eq!(
        msg,
        "HTTP 400 AuthorizationHeaderMalformed: unexpected scope: 'us-east-1' \
         (check --region / AWS_REGION)"
    );
    let (kind, _) = classify(&S3Error::HttpFailWithBody(404, String::new()), "e");
    assert_eq!(kind, StorageErrorKind::NotFound);
    assert_eq!(status_kind(403, ""), StorageErrorKind::AccessDenied);
    assert_eq!(
        status_kind(400, "InvalidAccessKeyId"),
        StorageErrorKind::AccessDenied
    );
    assert_eq!(status_kind(503, ""), StorageErrorKind::Transient);
    assert_eq!(status_kind(400, "InvalidRequest"), StorageErrorKind::Other);
    let io = io::Error::from(io::ErrorKind::ConnectionRefused);
    let (kind, msg) = classify(&S3Error::Io(io), "http://127.0.0.1:1");
    assert_eq!(kind, StorageErrorKind::Transient);
    assert!(msg.starts_with("http://127.0.0.1:1: "));
}

#[test]
fn times() {
    assert!(parse_time("2024-05-01T10:00:00.000Z").is_some());
    assert!(parse_time("Wed, 21 Oct 2015 07:28:00 GMT").is_some());
    assert!(parse_time("yesterday").is_none());
}

#[test]
fn aws_region_without_endpoint() {
    let config = S3Config {
        bucket: "bkt".into(),
        prefix: String::new(),
        endpoint: None,
        region: Some("eu-west-3".into()),
        path_style: false,
        credentials: Some(S3Credentials {
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            session_token: None,
        }),
        ca_bundle: None,
    };
    let s = S3Storage::new(config).unwrap();
    assert_eq!(s.describe(), "s3://bkt");
    assert!(s.endpoint.contains("amazonaws.com"), "{}", s.endpoint);
}
