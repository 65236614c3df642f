//! Regression tests for inputs found by `make fuzz` (tests/fuzz): each one
//! is the minimized input of a fuzz crash, run as a plain test so it can
//! never come back unnoticed.

use walsync::ltx;

/// restore_plan fuzz target: a key with an empty path segment (`prefix//x`,
/// or a leading `/`) parsed into the database name `/x`, which `object_key`
/// can never produce and `restore`/`list` could not find again.
#[test]
fn object_key_with_an_empty_segment_is_not_ours() {
    let name = "0000000000000004-0000000000000004.ltx";
    for (prefix, key) in [
        ("t/prefix", format!("t/prefix//\"/0000/{name}")),
        ("", format!("/app.db/0000/{name}")),
        ("", format!("app.db//0000/{name}")),
        ("", format!("a//b/0000/{name}")),
        ("p", format!("p//app.db/0000/{name}")),
    ] {
        assert_eq!(
            ltx::parse_object_key(prefix, &key),
            None,
            "{key:?} under {prefix:?}"
        );
    }
    // Names with inner slashes that object_key writes still parse and
    // round-trip.
    for (prefix, db) in [("", "app.db"), ("t/prefix", "\""), ("p/", "dir/app.db")] {
        let key = ltx::object_key(prefix, db, 0, 4, 4);
        let k = ltx::parse_object_key(prefix, &key).expect("our own key parses");
        assert_eq!(k.db, db);
        assert_eq!(
            ltx::object_key(prefix, &k.db, k.level, k.min_txid, k.max_txid),
            key
        );
    }
}
