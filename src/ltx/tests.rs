//! Unit tests of the LTX encoder, decoder, names and timestamps.

use super::*;

#[test]
fn crc64_check_value() {
    assert_eq!(CRC64.checksum(b"123456789"), 0xb909_56c7_75a4_1001);
}

#[test]
fn header_round_trip() {
    let h = Header {
        flags: HEADER_FLAG_NO_CHECKSUM,
        page_size: 4096,
        commit: 7,
        min_txid: 3,
        max_txid: 5,
        timestamp_ms: 1_700_000_000_123,
        pre_apply_checksum: 0,
        wal_offset: 32,
        wal_size: 8272,
        wal_salt1: 0xdead_beef,
        wal_salt2: 0x0102_0304,
        node_id: 42,
    };
    let b = h.encode();
    assert_eq!(&b[..4], b"LTX1");
    assert_eq!(Header::decode(&b).unwrap(), h);
    assert!(!h.is_snapshot());
    assert!(Header { min_txid: 1, ..h }.is_snapshot());
}

#[test]
fn lock_page_numbers() {
    assert_eq!(lock_pgno(4096), 262_145);
    assert_eq!(lock_pgno(512), 2_097_153);
    assert_eq!(lock_pgno(65536), 16_385);
}

#[test]
fn snapshot_lock_page_rules() {
    assert_eq!(next_snapshot_pgno(0, 5), 1);
    assert_eq!(next_snapshot_pgno(3, 5), 4);
    assert_eq!(next_snapshot_pgno(4, 5), 6);
    let h = Header::new(65536, 16386, 1, 1, 0);
    assert_eq!(h.last_snapshot_pgno(), 16386);
    let h = Header::new(65536, 16385, 1, 1, 0);
    assert_eq!(h.last_snapshot_pgno(), 16384);
    // A small snapshot never meets the lock page.
    assert_eq!(Header::new(4096, 3, 1, 1, 0).last_snapshot_pgno(), 3);
}

#[test]
fn uvarint_matches_go() {
    let mut v = Vec::new();
    put_uvarint(&mut v, 264);
    assert_eq!(v, [0x88, 0x02]);
    v.clear();
    put_uvarint(&mut v, u64::MAX);
    assert_eq!(v.len(), 10);
}

#[test]
fn names_and_keys() {
    assert_eq!(
        object_key("", "app.db", 9, 1, 2),
        "app.db/0009/0000000000000001-0000000000000002.ltx"
    );
    assert_eq!(
        object_key("backups/", "app.db", 0, 10, 10),
        "backups/app.db/0000/000000000000000a-000000000000000a.ltx"
    );
    assert_eq!(
        parse_object_name("000000000000000a-000000000000000b.ltx"),
        Some((10, 11))
    );
    assert_eq!(
        parse_object_name("000000000000000A-000000000000000b.ltx"),
        None
    );
    assert_eq!(
        parse_object_name("00000000000000a-000000000000000b.ltx"),
        None
    );
    assert_eq!(
        parse_object_name("000000000000000c-000000000000000b.ltx"),
        None
    );
    assert_eq!(
        parse_object_name("0000000000000000-000000000000000b.ltx"),
        None
    );
    assert_eq!(
        parse_object_name("000000000000000a-000000000000000b.lt"),
        None
    );
    let k = parse_object_key(
        "b/p",
        "b/p/dir/app.db/0009/0000000000000001-0000000000000002.ltx",
    )
    .unwrap();
    assert_eq!(
        k,
        ObjectKey {
            db: "dir/app.db".into(),
            level: 9,
            min_txid: 1,
            max_txid: 2
        }
    );
    assert_eq!(
        parse_object_key("", "app.db/0000/0000000000000003-0000000000000003.ltx")
            .unwrap()
            .level,
        0
    );
    assert!(parse_object_key("x", "app.db/0000/0000000000000003-0000000000000003.ltx").is_none());
    assert!(parse_object_key("", "app.db/000A/0000000000000003-0000000000000003.ltx").is_none());
    assert!(parse_object_key("", "app.db/0100/0000000000000003-0000000000000003.ltx").is_none());
    assert!(parse_object_key("", "0000/0000000000000003-0000000000000003.ltx").is_none());
}

#[test]
fn timestamps() {
    assert_eq!(format_timestamp_ms(0).unwrap(), "1970-01-01T00:00:00Z");
    assert_eq!(
        format_timestamp_ms(1_735_787_045_678).unwrap(),
        "2025-01-02T03:04:05.678Z"
    );
    assert_eq!(
        format_timestamp_ms(1_735_787_045_600).unwrap(),
        "2025-01-02T03:04:05.6Z"
    );
    for ms in [0, 1, 999, 1_735_787_045_678, 4_102_444_800_000, -1] {
        assert_eq!(
            parse_timestamp(&format_timestamp_ms(ms).unwrap()).unwrap(),
            ms
        );
        assert_eq!(
            parse_timestamp(&display_timestamp_ms(ms).unwrap()).unwrap(),
            ms
        );
    }
    assert_eq!(
        display_timestamp_ms(1_735_787_045_600).unwrap(),
        "2025-01-02T03:04:05.600Z"
    );
    assert_eq!(
        display_timestamp_ms(1_735_787_045_000).unwrap(),
        "2025-01-02T03:04:05.000Z"
    );
    assert_eq!(
        display_timestamp_ms(-1).unwrap(),
        "1969-12-31T23:59:59.999Z"
    );
    assert_eq!(
        parse_timestamp("2025-01-02T03:04:05.678901234Z").unwrap(),
        1_735_787_045_678
    );
    assert_eq!(
        parse_timestamp("2025-01-02T04:04:05.678+01:00").unwrap(),
        1_735_787_045_678
    );
    assert!(parse_timestamp("yesterday").is_err());
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_735_787_045_678);
    assert_eq!(format_system_time(t).unwrap(), "2025-01-02T03:04:05.678Z");
}

#[test]
fn small_round_trip() {
    let h = Header::new(512, 3, 1, 1, 0);
    let pages: Vec<(u32, Vec<u8>)> = (1..=3).map(|p| (p, vec![p as u8; 512])).collect();
    let bytes = encode_to_vec(h, pages.clone()).unwrap();
    let (h2, got) = decode_all(&bytes, "t").unwrap();
    assert_eq!(h2, h);
    assert_eq!(got, pages);
}

#[test]
fn database_of_maps_every_kind_of_key() {
    let cases = [
        (
            "app.db/0000/0000000000000003-0000000000000003.ltx",
            Some("app.db"),
        ),
        (
            "acme/data.db/0009/0000000000000001-0000000000000003.ltx",
            Some("acme/data.db"),
        ),
        ("app.db.walsync-lease", Some("app.db")),
        ("acme/data.db.walsync-lease", Some("acme/data.db")),
        ("app.db/0000/x.ltx", Some("app.db")),
        ("acme/data.db/0000/", Some("acme/data.db")),
        ("app.db/", Some("app.db")),
        ("acme/data.db/", Some("acme/data.db")),
        ("tenants/0042/", Some("tenants/0042")),
        ("tenants/0042/data.db/0000/", Some("tenants/0042/data.db")),
        ("app.db/0009/", Some("app.db")),
        ("app.db/README", Some("app.db")),
        ("app", None),
        ("", None),
        ("/0000/x", None),
        (".walsync-lease", None),
    ];
    for (key, want) in cases {
        assert_eq!(database_of(key), want, "{key}");
    }
}

#[test]
fn database_names() {
    for ok in [
        "app.db",
        "acme/data.db",
        "0003/x.db",
        "t/0042/data.db",
        "a b/ü.db",
    ] {
        assert_eq!(check_db_name(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "/a",
        "a/",
        "a//b",
        "a/./b",
        "../a",
        "a\nb",
        "t/0003/x.db",
        "x.walsync-lease",
    ] {
        assert!(check_db_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn encoded_size_never_exceeds_its_bound() {
    // Incompressible pages (a xorshift stream), the worst case for LZ4.
    // A sanity check: LZ4's own bound has ~10 % slack, more than the
    // index's share, so this cannot catch a few bytes missing from it.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for &(page_size, count) in &[(512u32, 1u32), (4096, 3), (65536, 2)] {
        let pages: Vec<(u32, Vec<u8>)> = (1..=count)
            .map(|pgno| {
                let page = (0..page_size)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                (pgno, page)
            })
            .collect();
        let header = Header::new(page_size, count, 1, 1, 1_700_000_000_000);
        let bytes = encode_to_vec(header, pages).expect("encode");
        let bound = max_encoded_size(u64::from(count), page_size);
        assert!(bytes.len() <= bound, "{} > {bound}", bytes.len());
        // Not wildly above either (LZ4's own bound allows 10 % growth).
        assert!(
            bound < bytes.len() * 115 / 100 + 256,
            "{} of {bound}",
            bytes.len()
        );
    }
}
